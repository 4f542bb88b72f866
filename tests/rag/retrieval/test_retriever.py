"""Retrieval on the shipped course corpus: dense, bm25 and hybrid find the right passages."""

from __future__ import annotations

import pytest

from rag.api import open_retriever
from rag.retrieval.retriever import rrf


@pytest.fixture(scope="module")
def retriever(course_index):
    return open_retriever(course_index)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_lora_question_returns_the_lora_passage(retriever, mode):
    hits = retriever.search("What does LoRA freeze?", k=5, mode=mode)
    assert len(hits) == 5 and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(hits[i].score >= hits[i + 1].score for i in range(4))
    assert any("LoRA" in h.chunk.text and "freez" in h.chunk.text.lower() for h in hits)
    for h in hits:
        d = h.to_dict()
        assert {"chunk_id", "text", "score", "rank", "source", "section"} <= set(d)
        assert d["source"].endswith(".md")


def test_hybrid_hits_carry_dense_cosine(retriever):
    hits = retriever.search("temperature controls randomness", k=5, mode="hybrid")
    assert all(-1.0 <= h.scores["dense"] <= 1.0 for h in hits)
    assert any("emperature" in h.chunk.text for h in hits[:3])


def test_rrf_fuses_rankings():
    fused = rrf([[1, 2, 3], [3, 1, 4]], k=60)
    order = [p for p, _ in fused]
    assert order[0] == 1 and set(order) == {1, 2, 3, 4}
    assert dict(fused)[1] == pytest.approx(1 / 61 + 1 / 62)


def test_empty_query_returns_nothing(retriever):
    assert retriever.search("   ") == []


def test_retriever_switches_to_a_rebuilt_index(small_corpus, settings, embedder):
    from rag.api import index_corpus

    index_corpus(small_corpus, settings)
    r = open_retriever(settings)
    assert not any("Quantization" in h.chunk.text for h in r.search("quantization int8", k=3))
    (small_corpus / "quant.md").write_text("# Quantization\n\nQuantization stores int8 weights.", encoding="utf-8")
    index_corpus(small_corpus, settings)
    assert any("Quantization" in h.chunk.text for h in r.search("quantization int8", k=3))


def test_every_mode_reports_the_dense_cosine(retriever):
    for mode in ("dense", "bm25", "hybrid"):
        hits = retriever.search("How do I bake sourdough bread at home?", k=3, mode=mode)
        assert all(-1.0 <= h.scores["dense"] <= 1.0 for h in hits), mode


def test_a_quiz_item_is_searched_as_its_stem_and_with_its_options(retriever):
    from rag.answering.choices import search_wordings

    stem = "Which method trains two small low-rank matrices instead of the whole network?"
    options = ["LoRA (low-rank adaptation)", "Full fine-tuning", "Prompt engineering"]
    wordings = search_wordings(stem, options)
    assert wordings == [stem, stem + "\nLoRA (low-rank adaptation)\nFull fine-tuning\nPrompt engineering"]
    fused = retriever.search_many(wordings, k=5, mode="hybrid")
    assert [h.rank for h in fused] == [1, 2, 3, 4, 5]
    assert all(fused[i].score >= fused[i + 1].score for i in range(4))
    assert len({h.chunk.id for h in fused}) == 5
    # every fused passage comes from one of the two rankings, with that ranking's dense cosine
    alone = [retriever.search(w, k=30, mode="hybrid") for w in wordings]
    cosine = {h.chunk.id: h.scores["dense"] for run in alone for h in run}
    assert all(h.chunk.id in cosine and h.scores["dense"] >= cosine[h.chunk.id] - 1e-6 for h in fused)
    # the top passage of each wording is in the fused top 5 (RRF: a first rank is never buried)
    assert {alone[0][0].chunk.id, alone[1][0].chunk.id} <= {h.chunk.id for h in fused}


def test_one_wording_is_a_plain_search(retriever):
    q = "What does LoRA freeze?"
    plain = retriever.search(q, k=5, mode="hybrid")
    assert [h.chunk.id for h in retriever.search_many([q, q, " "], k=5, mode="hybrid")] == [h.chunk.id for h in plain]
