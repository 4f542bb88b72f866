"""Issue 13: weighted fusion, near-duplicate collapse and small-to-big (parent/child) retrieval."""

from __future__ import annotations

import pytest

from rag.api import index_corpus, open_retriever
from rag.errors import RagError
from rag.ingest.chunking import Chunk
from rag.retrieval.fusion import collapse_near_duplicates, rrf
from rag.retrieval.parent_child import Passages
from rag.retrieval.retriever import Retriever


def test_weighted_rrf_lets_the_heavier_ranking_decide():
    even = dict(rrf([[1, 2], [2, 1]]))
    assert even[1] == pytest.approx(even[2])
    fused = rrf([[1, 2], [2, 1]], k=60, weights=[0.8, 0.2])
    assert [p for p, _ in fused] == [1, 2]
    assert dict(fused)[1] == pytest.approx(0.8 / 61 + 0.2 / 62)
    assert [p for p, _ in rrf([[1, 2], [3]], weights=[0.0, 1.0])] == [3]  # a zero weight drops that ranking
    with pytest.raises(ValueError):
        rrf([[1], [2]], weights=[1.0])


def test_collapse_drops_near_identical_passages_and_refills_k():
    texts = {1: "LoRA freezes the weights.", 2: "LoRA  freezes the\nweights. ", 3: "Attention relates tokens.",
             4: "lora freezes the weights!", 5: "Quantization stores int8."}
    ranked = [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6), (5, 0.5)]
    kept = collapse_near_duplicates(ranked, texts.__getitem__, k=3)
    assert [p for p, _ in kept] == [1, 3, 5]
    assert [p for p, _ in collapse_near_duplicates(ranked, texts.__getitem__, k=5, threshold=100.0)] == [1, 3, 4, 5]


def _child(cid: int, text: str, parent: int | None, parent_text: str | None = None) -> Chunk:
    meta = {} if parent is None else {"parent": parent, "parent_span": [0, 50]}
    if parent_text is not None:
        meta["parent_text"] = parent_text
    return Chunk(cid, text, "a.md", "A", (0, len(text)), meta)


def test_passages_group_children_and_score_by_the_best_child():
    chunks = [_child(1, "alpha", 100, "alpha beta"), _child(2, "beta", 100), _child(3, "lone", None),
              _child(4, "gamma", 200, "gamma")]
    g = Passages.of(chunks)
    assert [p.id for p in g.passages] == [100, 3, 200]
    assert g.passages[0].text == "alpha beta" and g.passages[0].span == (0, 50)
    assert "parent_text" not in g.passages[0].metadata
    assert g.members == [[0, 1], [2], [3]] and g.fanout == 2
    assert g.best([(1, 0.9), (0, 0.5), (3, 0.4), (2, 0.1)]) == [(0, 0.9), (2, 0.4), (1, 0.1)]


@pytest.fixture
def duplicated(small_corpus):
    """The small corpus with a near-copy of one file (one word changed: identical files are indexed once)."""
    text = (small_corpus / "fine-tuning.md").read_text(encoding="utf-8")
    (small_corpus / "fine-tuning-copy.md").write_text(text.replace("Only the adapter", "Only this adapter"),
                                                      encoding="utf-8")
    return small_corpus


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_identical_files_fill_one_slot_not_two(duplicated, settings, mode):
    index_corpus(duplicated, settings)
    hits = open_retriever(settings).search("What does LoRA freeze?", k=4, mode=mode)
    lora = [h for h in hits if "freezes all the weights" in h.chunk.text]
    assert len(lora) == 1
    loose = Retriever(settings.index_dir, open_retriever(settings).embedder, collapse_duplicates=False)
    assert len([h for h in loose.search("What does LoRA freeze?", k=4, mode=mode)
                if "freezes all the weights" in h.chunk.text]) == 2


def test_children_are_searched_and_their_passage_is_returned(small_corpus, settings):
    settings.child_tokens = 24
    index_corpus(small_corpus, settings)
    r = open_retriever(settings)
    chunks = r.index.chunks
    passages = r.passages().passages
    assert len(chunks) > len(passages)  # several windows per passage
    assert all("parent" in c.metadata for c in chunks)
    hit = r.search("Which two small matrices does LoRA train?", k=1)[0]
    assert hit.chunk.id in {p.id for p in passages}
    windows = [c for c in chunks if c.metadata["parent"] == hit.chunk.id]
    assert len(windows) >= 2 and all(w.text in hit.chunk.text for w in windows)
    assert -1.0 <= hit.scores["dense"] <= 1.0
    # what is shown: the passage from the window that matched, so a match late in a passage is visible
    assert hit.match in [w.text for w in windows] and hit.to_dict()["match"] == hit.match
    assert hit.snippet == hit.chunk.text[hit.chunk.text.index(hit.match[:80]):]


def test_first_members_name_the_child_that_ranked_each_passage():
    g = Passages.of([_child(1, "alpha", 100, "alpha beta"), _child(2, "beta", 100), _child(3, "lone", None)])
    assert g.first_members([(1, 0.9), (0, 0.5), (2, 0.1)]) == {0: 1, 1: 2}


def test_an_index_without_children_is_searched_chunk_by_chunk(small_corpus, settings):
    settings.child_tokens = 0
    index_corpus(small_corpus, settings)
    r = open_retriever(settings)
    assert len(r.passages().passages) == len(r.index.chunks)
    hits = r.search("temperature top-p sampling", k=2)
    assert hits and hits[0].chunk.id in {c.id for c in r.index.chunks}


def test_dense_weight_outside_0_1_is_refused(small_corpus, settings, embedder):
    index_corpus(small_corpus, settings)
    with pytest.raises(RagError, match="dense_weight"):
        Retriever(settings.index_dir, embedder, dense_weight=1.5)
