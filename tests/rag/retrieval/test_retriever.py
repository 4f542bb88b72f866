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
