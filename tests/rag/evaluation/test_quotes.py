"""Scoring a quote against annotated evidence spans (rag/evaluation/quotes.py), and the model-score cache
with the real bundled model."""

from __future__ import annotations

import json

import pytest

from rag.evaluation.courses import EvidenceSpan
from rag.evaluation.quotes import CachedScorer, evidence_share, holds_by_words, holds_evidence, locate, quote_kind

LESSON = ("# Fine-tuning\n\nLoRA freezes the weights of the model. It trains two small\nmatrices instead.\n\n"
          "Pros:\n\n- Small upfront cost\n- LoRA freezes the weights of the model.\n")


def _span(text: str) -> EvidenceSpan:
    start = LESSON.index(text)
    return EvidenceSpan("lesson.md", start, start + len(text), text)


def test_locate_is_whitespace_tolerant_and_takes_the_nearest_occurrence():
    quote = "It trains two small matrices instead."
    start, end = locate(quote, LESSON)
    assert LESSON[start:end] == "It trains two small\nmatrices instead."
    first = LESSON.index("LoRA freezes")
    second = LESSON.rindex("LoRA freezes")
    assert locate("LoRA freezes the weights of the model.", LESSON, near=second - 5)[0] == second
    assert locate("LoRA freezes the weights of the model.", LESSON, near=0)[0] == first
    assert locate("not in the lesson", LESSON) is None


def test_holds_needs_half_of_the_shorter_span_in_the_same_file():
    ev = [_span("LoRA freezes the weights of the model.")]
    pair = locate("LoRA freezes the weights of the model. It trains two small matrices instead.", LESSON)
    assert holds_evidence(pair, "lesson.md", ev)  # the evidence lies inside a two-sentence quote
    assert not holds_evidence(pair, "other.md", ev)  # another file's offsets never count
    nxt = locate("It trains two small matrices instead.", LESSON)
    assert not holds_evidence(nxt, "lesson.md", ev)  # the adjacent sentence is not the evidence
    assert evidence_share(pair, "lesson.md", ev) == pytest.approx(len(ev[0].text) / (pair[1] - pair[0]))
    touching = (ev[0].end - 3, ev[0].end + 40)  # three shared characters: not half of either
    assert not holds_evidence(touching, "lesson.md", ev)
    assert holds_by_words("lora freezes the   weights of the model.", ev)


def test_quote_kind_reads_the_passage_units():
    assert quote_kind(LESSON, LESSON.index("Pros:"), LESSON.index("Pros:") + 5) == "label"
    start = LESSON.index("Small upfront")
    assert quote_kind(LESSON, start, start + len("Small upfront cost")) == "fragment"
    start = LESSON.index("LoRA freezes")
    assert quote_kind(LESSON, start, start + 38) == "sentence"
    assert quote_kind(LESSON, 2, 13) == "heading"


@pytest.mark.llm
def test_cached_scorer_scores_each_candidate_once_and_resumes(tmp_path):
    from rag.api import get_generator
    from rag.config import Settings

    generator = get_generator(Settings(model="bundled"))
    messages = [{"role": "user", "content": "LoRA freezes the weights. What does LoRA freeze?"}]
    path = tmp_path / "scores.json"
    scorer = CachedScorer(generator, path)
    first = scorer.score_continuations(messages, "Answer: ", ["the weights", "the data"])
    assert scorer.scored == 2 and first == pytest.approx(generator.score_continuations(messages, "Answer: ",
                                                                                       ["the weights", "the data"]))
    again = scorer.score_continuations(messages, "Answer: ", ["the data", "the weights", "nothing"])
    assert scorer.scored == 3 and again[:2] == [first[1], first[0]]  # only the new candidate was scored
    resumed = CachedScorer(generator, path)
    assert resumed.score_continuations(messages, "Answer: ", ["the weights"]) == [first[0]] and resumed.scored == 0
    data = json.loads(path.read_text(encoding="utf-8"))
    data["model"] = "another model"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert CachedScorer(generator, path).scores == {}  # scores of another model are never read back
