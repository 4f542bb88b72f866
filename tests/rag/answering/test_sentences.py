"""Quote candidates are sentences that state something (rag/answering/sentences.py): never a heading, a slide
or section title, a list label, a question or a fragment; and an answer stated in two adjacent sentences
can be quoted whole. Real embedder (MiniLM) for the choices; the bundled model where marked."""

from __future__ import annotations

import pytest

from rag.answering import grounding
from rag.answering.sentences import passage_units, quote_spans
from rag.errors import RagError

SLIDES = """# Generative AI with LLMs

Fine Tuning
===========

5. Fine Tuning: Compared to Prompt Engineering

Image of the fine-tuning workflow

Pros:

- Small upfront cost
- No technical knowledge
- It lets us put more data into the model than what fits into the prompt.

**Why fine-tune at all**.

What does fine-tuning change?

W' = W + BA

```python
model.train()
```

While prompting is good for prototypes, fine-tuning is preferred for domain-specific production use.
Fine-tuning updates the model's weights, whereas prompt engineering only changes the input text.
"""

NOT_STATEMENTS = {
    "Generative AI with LLMs": "heading", "Fine Tuning": "heading",
    "Fine Tuning: Compared to Prompt Engineering": "title", "Image of the fine-tuning workflow": "title",
    "Pros:": "label", "Small upfront cost": "fragment", "No technical knowledge": "fragment",
    "**Why fine-tune at all**.": "heading", "What does fine-tuning change?": "question",
    "W' = W + BA": "fragment", "model.train()": "code",
}
STATEMENTS = [
    "It lets us put more data into the model than what fits into the prompt.",
    "While prompting is good for prototypes, fine-tuning is preferred for domain-specific production use.",
    "Fine-tuning updates the model's weights, whereas prompt engineering only changes the input text.",
]


def test_each_unit_is_the_passage_own_text_and_kind():
    units = passage_units(SLIDES)
    for u in units:
        assert " ".join(SLIDES[u.start:u.end].split()) == u.text  # the span is the passage's own wording
    kinds = {u.text: u.kind for u in units}
    for text, kind in NOT_STATEMENTS.items():
        assert kinds.get(text) == kind, (text, kinds.get(text))
    assert all(kinds[s] == "sentence" for s in STATEMENTS)


@pytest.mark.parametrize("spans", ["content", "content-pairs"])
def test_heading_title_label_fragment_is_never_a_candidate(spans):
    cands = grounding.quote_candidates(SLIDES, spans=spans)
    assert set(STATEMENTS) <= set(cands)
    for text in NOT_STATEMENTS:
        assert not any(text in c for c in cands), text
    # the previous candidates offered the slide title and the list fragments (kept for option support)
    old = grounding.quote_candidates(SLIDES)
    assert "Fine Tuning: Compared to Prompt Engineering" in old and "Small upfront cost" in old


def test_pairs_are_two_adjacent_sentences_of_one_line():
    text = "LoRA freezes the weights of the pre-trained model. It trains two small matrices instead.\n\n" \
           "- A list item that stands on its own line here.\n- Another item that stands on its own line."
    pairs = [u for u in quote_spans(text) if u.sentences == 2]
    assert [p.text for p in pairs] == ["LoRA freezes the weights of the pre-trained model. "
                                       "It trains two small matrices instead."]  # never across list items
    assert not [u for u in quote_spans(text, pairs=False) if u.sentences == 2]
    boiler = frozenset({"It trains two small matrices instead."})
    assert not [u for u in quote_spans(text, exclude=boiler) if u.sentences == 2]  # nor a pair holding boilerplate


def test_a_passage_cut_inside_a_code_block_reads_the_text_after_it():
    text = "plt.show()\n```\n\nThis code draws a chart and a centre circle in the middle of it."
    kinds = [(u.text, u.kind) for u in passage_units(text)]
    assert kinds[0] == ("plt.show()", "code")
    assert kinds[-1] == ("This code draws a chart and a centre circle in the middle of it.", "sentence")


def test_the_difference_question_quotes_a_statement_not_the_slide_title(embedder):
    question = "What is the difference between prompt engineering and fine-tuning?"
    old = grounding.choose_quote(None, [], question, [SLIDES], embedder, weight=1.0, use_model=False, spans="lines")
    assert old is not None and old.text == "Fine Tuning: Compared to Prompt Engineering"  # what the issue saw
    for spans in ("content", "content-pairs"):
        q = grounding.choose_quote(None, [], question, [SLIDES], embedder, weight=1.0, use_model=False, spans=spans)
        assert q is not None and grounding.verify_quote(q, SLIDES)
        assert "prompt engineering" in q.text.lower() and q.text.rstrip().endswith(".")


def test_an_answer_in_two_adjacent_sentences_is_quoted_whole(embedder):
    passage = ("Transformers were introduced in 2017.\n\n"
               "LoRA freezes every weight of the pre-trained model. It trains two small low-rank matrices instead.\n\n"
               "Sampling settings change how random the output is.")
    question = "How does LoRA fine-tune a model?"  # the answer: what it freezes and what it trains
    q = grounding.choose_quote(None, [], question, [passage], embedder, weight=1.0, use_model=False,
                               spans="content-pairs")
    assert q is not None and grounding.verify_quote(q, passage)
    assert q.text == "LoRA freezes every weight of the pre-trained model. It trains two small low-rank matrices instead."
    single = grounding.choose_quote(None, [], question, [passage], embedder, weight=1.0, use_model=False, spans="content")
    assert single is not None and single.text.count(".") == 1 and "LoRA" in single.text


def test_unknown_span_setting_is_one_clear_error():
    with pytest.raises(RagError, match="unknown quote spans 'words'"):
        grounding.candidate_spans(SLIDES, spans="words")


@pytest.mark.llm
def test_lora_question_still_quotes_the_lora_passage_on_the_shipped_course(course_index):
    from rag.api import make_pipeline

    pipe = make_pipeline(course_index)
    for question in ("What does LoRA freeze?", "What does LoRA freeze during fine-tuning?"):
        resp = pipe.ask(question)
        texts = [h.chunk.text for h in resp.plan.used_hits]
        for spans in ("content", "content-pairs"):
            q = grounding.choose_quote(pipe.generator, resp.plan.messages, question, texts, pipe.retriever.embedder,
                                       weight=pipe.retriever_weight, exclude=pipe.boilerplate(), spans=spans)
            assert q is not None and grounding.verify_quote(q, texts[q.passage - 1])
            assert "LoRA" in q.text or "LoRA" in texts[q.passage - 1][max(0, q.start - 300):q.start], (spans, q.text)
