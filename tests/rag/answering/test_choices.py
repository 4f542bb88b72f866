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
    item = Choice("Which of these is stated?", tuple(options), ("A", "B", "C"))
    picked = pick_option(None, [], item, passages, embedder, 1.0)
    claims = choices.claim_support([choices.support_text(item.stem, o) for o in options], passages, embedder)
    assert picked.model is None and picked.rule == "best"
    assert picked.support == pytest.approx(claims, abs=1e-5) and picked.index == max(range(3), key=claims.__getitem__)


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
    picked = pick_option(None, [], choice, [item, notes], embedder, 1.0)
    assert picked.index == 1  # chosen by the notes' sentence, not by the item's own option lines
    with_stem = choices.restated_options([item, notes], [*choice.options, choice.stem])
    assert len(with_stem) == 4 and any(r.startswith("Question 12:") for r in with_stem)


@pytest.mark.parametrize("stem, option, expected", [
    ("A perceptron is a ___ type of model", "binary classification", "A perceptron is a binary classification type of model"),
    ("TensorFlow is to ____ while PyTorch is to ____", "Google, Facebook", "TensorFlow is to Google while PyTorch is to Facebook"),
    ("The AI winter occurred in", "the 1970s", "The AI winter occurred in the 1970s"),
    ("Which method freezes the weights?", "LoRA", "Which method freezes the weights? LoRA"),
])
def test_an_option_becomes_a_claim_written_into_its_stem(stem, option, expected):
    assert choices.claim(stem, option) == expected


def test_under_a_question_stem_the_option_alone_is_scored():
    assert choices.support_text("What does LoRA freeze?", "The weights") == "The weights"
    assert choices.support_text("LoRA freezes", "the weights") == "LoRA freezes the weights"
    assert choices.support_text("What is a ___ model?", "binary") == "What is a binary model?"  # a blank: the claim


def test_what_lora_freezes_is_chosen_from_the_passage_that_says_so(embedder):
    item = Choice("What does LoRA freeze during fine-tuning?", ("The weights of the pre-trained model",
                  "The tokenizer's vocabulary", "The learning rate schedule"), ("A", "B", "C"))
    passages = ["LoRA freezes all weights in the original model layers and introduces new components which are "
                "trained on new data.",
                "Partial fine-tuning (PEFT: LoRA, QLoRA) updates only a subset of parameters, freezing the rest."]
    assert pick_option(None, [], item, passages, embedder, 1.0).chosen == (0,)


@pytest.mark.parametrize("option, kind", [
    ("All of the above", "all"), ("both of these", "all"), ("a and b", "all"), ("Both RNNs and Transformers", "all"),
    ("None of the above", "none"), ("neither", "none"), ("Dense optical flow", "plain"), ("Allocation", "plain"),
])
def test_options_that_stand_for_the_others_are_recognised(option, kind):
    assert choices.option_kind(option) == kind


def test_item_kinds_are_read_from_the_options_and_the_stem():
    assert choices.is_true_false(["True", "False"]) and choices.is_true_false(["false.", "TRUE"])
    assert not choices.is_true_false(["True", "False", "Both"]) and not choices.is_true_false(["Yes", "Maybe"])
    item = parse_choice("Which are PEFT methods? Select all that apply.\nA. LoRA\nB. Prompt tuning\nC. Full fine-tuning")
    assert item is not None and item.multi
    single = parse_choice("Which is a PEFT method?\nA. LoRA\nB. Full fine-tuning")
    assert single is not None and not single.multi


PASSAGES = ["LoRA freezes the pre-trained weights and trains two small low-rank matrices.",
            "Prompt tuning learns a few soft prompt vectors and leaves the model unchanged.",
            "Temperature rescales the logits before sampling."]


def test_all_of_the_above_wins_when_every_option_is_stated(embedder):
    item = Choice("Parameter-efficient fine-tuning methods include", ("LoRA, which trains low-rank matrices",
                  "prompt tuning, which learns soft prompt vectors", "all of the above"), ("A", "B", "C"))
    picked = pick_option(None, [], item, PASSAGES, embedder, 1.0)
    assert picked.rule == "all" and picked.chosen == (2,)
    # one option the passages do not state at all: the spread is beyond the margin, the best plain one wins
    uneven = Choice(item.stem, ("LoRA, which trains low-rank matrices", "baking sourdough bread at home",
                                "all of the above"), ("A", "B", "C"))
    picked = pick_option(None, [], uneven, PASSAGES, embedder, 1.0)
    assert picked.rule == "best" and picked.chosen == (0,)


def test_none_of_the_above_wins_when_no_option_is_stated(embedder):
    item = Choice("Which bread needs a starter?", ("Sourdough loaf", "Rye bread", "None of the above"), ("A", "B", "C"))
    picked = pick_option(None, [], item, PASSAGES, embedder, 1.0)
    assert max(picked.support[:2]) < choices.NONE_FLOOR and picked.rule == "none" and picked.chosen == (2,)


def test_select_all_that_apply_returns_a_set_holding_the_best_option(embedder):
    item = Choice("Which methods train low-rank matrices? Select all that apply.",
                  ("LoRA", "Temperature sampling", "Beam search"), ("A", "B", "C"), multi=True)
    picked = pick_option(None, [], item, PASSAGES, embedder, 1.0)
    assert picked.rule == "set" and 0 in picked.chosen
    assert all(picked.support[i] >= picked.support[0] - choices.SET_MARGIN for i in picked.chosen)


def test_true_false_without_log_probabilities_falls_back_to_the_claims(embedder):
    from rag.generation.http import OpenAIGenerator

    # an HTTP model declares no log-probabilities; the closed port would fail the test if it were asked
    gen = OpenAIGenerator("http://127.0.0.1:9/v1")
    assert not gen.supports_logprobs
    item = Choice("LoRA freezes the pre-trained weights.", ("True", "False"), ("A", "B"))
    picked = pick_option(gen, [], item, PASSAGES, embedder, 1.0)
    assert picked.rule == "true-false" and picked.model is None and len(picked.chosen) == 1


class _Recorder:
    """Records what a true/false item asks; answers with fixed log-probabilities (no model can be quizzed in
    a unit test, and the point is the prompt each format gets)."""

    supports_logprobs = True

    def __init__(self, prompt_format: str) -> None:
        self.prompt_format, self.asked = prompt_format, []

    def continuation_logprobs(self, messages, prefix, continuations, first_tokens=None):
        self.asked.append((messages, prefix, list(continuations)))
        return [(-1.0, 1), (-2.0, 1)]


def test_a_raft_tuned_model_judges_true_false_in_its_own_format_and_a_chat_model_in_chat(embedder):
    from rag.answering.grounding import ANSWER_MARK
    from rag.answering.prompts import DOCUMENT_OPEN

    item = Choice("LoRA freezes the pre-trained weights.", ("True", "False"), ("A", "B"))
    raft, chat = _Recorder("raft"), _Recorder("chat")
    for gen in (raft, chat):
        assert pick_option(gen, [], item, PASSAGES, embedder, 1.0).rule == "true-false"
    (read, prior) = raft.asked
    assert read[1] == ANSWER_MARK and read[2] == [" True", " False"]  # scored right after `<ANSWER>:`
    assert DOCUMENT_OPEN in read[0][-1]["content"] and item.stem in read[0][-1]["content"]
    assert DOCUMENT_OPEN not in prior[0][-1]["content"]  # closed book: no documents
    (read, prior) = chat.asked
    assert read[1:] == ("", ["True", "False"]) and read[0][-1]["content"].startswith("Course text:\n")
    assert "Is the statement true or false according to the course text? Answer True or False." in read[0][-1]["content"]
    assert prior == (choices.true_false_messages(item.stem, ()), "", ["True", "False"])


@pytest.mark.llm  # the bundled causal model in-process
def test_true_false_asks_the_model_with_the_closest_sentences_against_closed_book(embedder):
    from rag.api import get_generator
    from rag.config import Settings

    gen = get_generator(Settings(model="bundled"))
    item = Choice("LoRA freezes the pre-trained weights.", ("True", "False"), ("A", "B"))
    picked = pick_option(gen, [], item, PASSAGES, embedder, 1.0)
    assert picked.rule == "true-false" and picked.model is not None
    assert picked.scores[0] == pytest.approx(-picked.scores[1]) and picked.chosen == (0 if picked.scores[0] > 0 else 1,)
    evidence = ["LoRA freezes the pre-trained weights and trains two small low-rank matrices."]
    read = gen.continuation_logprobs(choices.true_false_messages(item.stem, evidence[:1]), "", ["True", "False"])
    assert len(read) == 2
