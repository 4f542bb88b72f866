"""Multiple-choice questions (issue 14): options read from a pasted quiz item, their support in the passages,
and the grounded answer that picks an option — the parser without a model, the support with the real
embedder, the whole answer with the real bundled model on a tiny real index (conftest's `small_index`)."""

from __future__ import annotations

import pytest

from rag.answering import choices
from rag.answering.choices import Choice, option_support, parse_choice, pick_option

LORA_MC = ("Which of the following best describes how LoRA works?\n\n"
           "A. LoRA trains a smaller, distilled copy of the whole network from scratch.\n"
           "B. LoRA freezes all the weights of the pre-trained model and trains two small low-rank matrices.\n"
           "C. LoRA deletes the attention layers to save memory.\n"
           "D. LoRA updates every weight of the network with a larger learning rate.")


@pytest.mark.parametrize("text, options, labels", [
    (LORA_MC, 4, ("A", "B", "C", "D")),
    ("What controls randomness?\n- [ ] Top-k\n- [x] Temperature\n- [ ] Max tokens", 3, ("1", "2", "3")),
    ("What controls randomness?\n\n☐ Top-k\n\n☒ Temperature\n", 2, ("1", "2")),
    ("Pick the decoder-only model:\n- BERT\n- GPT\n- T5", 3, ("1", "2", "3")),
    ("Which is right?\n(a) one thing\n(b) another thing\nChoose one.", 2, ("A", "B")),
])
def test_options_are_read_from_the_usual_quiz_markers(text, options, labels):
    choice = parse_choice(text)
    assert isinstance(choice, Choice)
    assert len(choice.options) == options and choice.labels == labels
    assert all(o and not o.startswith(("[", "☐", "☒", "-")) for o in choice.options)
    assert choice.stem and not any(o in choice.stem for o in choice.options)


def test_instructions_after_the_options_stay_in_the_stem():
    choice = parse_choice("Which is right?\n(a) one thing\n(b) another thing\nChoose one.")
    assert choice is not None and choice.stem == "Which is right?\nChoose one."
    assert choice.options == ("one thing", "another thing")


@pytest.mark.parametrize("text", [
    "What does LoRA freeze during fine-tuning?",
    "A. only one lettered line is no choice",
    # bullets that are not options: the line above them is a statement, not a question
    "I read these notes.\n- attention is all you need\n- transformers scale",
    "What is it?\nA. same\nB. same",  # duplicate options are no choice
    "Explain the steps:\n\n1. tokenise\n2. embed",  # numbered steps are not options
])
def test_questions_without_options_are_not_choices(text):
    assert parse_choice(text) is None


def test_support_is_the_best_cosine_with_a_sentence_of_the_passages(embedder):
    passages = ["LoRA freezes all the weights of the pre-trained model. It trains two small matrices.",
                "Temperature controls the randomness of sampling."]
    options = ["Temperature", "LoRA freezes the pre-trained weights", "A recipe for bread"]
    support = option_support(options, passages, embedder)
    vecs = embedder.encode(options + ["LoRA freezes all the weights of the pre-trained model.",
                                      "It trains two small matrices.",
                                      "Temperature controls the randomness of sampling."])
    assert support == pytest.approx((vecs[:3] @ vecs[3:].T).max(axis=1).tolist(), abs=1e-5)
    assert support[2] < min(support[:2])  # the bread recipe is nowhere in the passages
    # a boilerplate sentence never counts as support
    assert option_support(["Temperature"], passages[1:], embedder,
                          exclude={"Temperature controls the randomness of sampling."}) == [0.0]
    # weight 1.0: the support decides and the model is not asked (None cannot score anything)
    picked = pick_option(None, [], options, passages, embedder, 1.0)
    assert picked.model is None and picked.index == max(range(3), key=support.__getitem__)


@pytest.mark.llm  # the bundled causal model in-process
def test_a_pasted_quiz_item_gets_an_option_quoted_from_the_passages(small_index):
    from rag.api import make_pipeline

    pipe = make_pipeline(small_index)
    resp = pipe.ask(LORA_MC)
    pieces = list(resp)
    ans = resp.answer()
    assert ans.answer_mode == "grounded" and ans.choice is not None
    choice = ans.choice.to_dict()
    scores = choice["scores"]
    assert len(scores) == 4 and choice["index"] == ans.choice.index == max(range(4), key=scores.__getitem__)
    assert len(choice["support"]) == 4
    assert ans.choice.label == "B"  # the passage says LoRA freezes the weights and trains low-rank matrices
    assert ans.short_answer == f"B. {ans.choice.option}" and pieces[-1] == ans.short_answer
    # the quote is the LoRA passage's own sentence, that passage listed first and marked
    assert ans.quote is not None and "freezes" in ans.quote.text
    first = ans.sources[0]
    assert first.cited and first.quote is ans.quote and first.text[ans.quote.start:ans.quote.end] == ans.quote.text
    assert len(ans.sources) == len(resp.plan.used_hits)  # every passage given to the model is listed
    assert ans.to_dict()["choice"]["label"] == "B"


@pytest.mark.llm  # the bundled causal model in-process
def test_the_model_takes_part_in_the_choice_below_weight_one(small_index):
    from rag.api import make_pipeline

    pipe = make_pipeline(small_index.model_copy(update={"choice_retriever_weight": 0.5}))
    ans = pipe.ask(LORA_MC).answer()
    assert ans.choice is not None
    choice = ans.choice.to_dict()
    assert choice["model"] is not None and len(choice["model"]) == 4
    assert choice["scores"] == pytest.approx(list(choices.combine(choice["model"], choice["support"], 0.5)), abs=1e-3)


def test_a_pasted_quiz_item_is_searched_by_its_stem_and_with_its_options(small_index):
    from rag.api import make_pipeline
    from rag.generation.http import OpenAIGenerator

    # no model call happens before iteration; the generator is a closed port so one would fail the test
    pipe = make_pipeline(small_index, generator=OpenAIGenerator("http://127.0.0.1:9/v1"))
    resp = pipe.ask(LORA_MC)
    stem = "Which of the following best describes how LoRA works?"
    assert resp.plan.query == stem
    choice = choices.parse_choice(LORA_MC)
    fused = pipe.retriever.search_many(choices.search_wordings(stem, choice.options), pipe.top_k, pipe.mode)
    assert [h.chunk.id for h in resp.plan.hits] == [h.chunk.id for h in fused]
    plain = pipe.ask("What does LoRA freeze?")
    assert plain.plan.query == "What does LoRA freeze?"
    searched = pipe.retriever.search(plain.plan.query, pipe.top_k)
    assert [h.chunk.id for h in plain.plan.hits] == [h.chunk.id for h in searched]


def test_the_quiz_item_itself_is_neither_support_nor_quote(embedder):
    # the course holds the quiz item: every option is in it word for word, so it would support all of them
    item = ("Question 12: Which of the following best describes how LoRA works?\n\n"
            "- A. LoRA trains a smaller, distilled copy of the whole network from scratch.\n"
            "- B. LoRA freezes all the weights of the pre-trained model and trains two small low-rank matrices.\n"
            "- C. LoRA deletes the attention layers to save memory.")
    notes = "LoRA keeps the pre-trained weights frozen; only two small low-rank matrices are trained."
    choice = parse_choice(LORA_MC)
    assert choice is not None
    restated = choices.restated_options([item, notes], choice.options)
    assert len(restated) == 3 and all("LoRA" in r for r in restated) and notes not in restated
    picked = pick_option(None, [], choice.options, [item, notes], embedder, 1.0)
    assert picked.index == 1  # chosen by the notes' sentence, not by the item's own option lines
    with_stem = choices.restated_options([item, notes], [*choice.options, choice.stem])
    assert len(with_stem) == 4 and any(r.startswith("Question 12:") for r in with_stem)
