"""Retriever: dense (FAISS), bm25 (bm25s) or hybrid (weighted reciprocal rank fusion); returns ranked Hits.

Every mode ranks *passages*: the chunks of the index are child windows of larger passages when the index
was built with `child_tokens` (rag/retrieval/parent_child.py), and each passage scores as its best child;
near-identical passages are collapsed (rag/retrieval/fusion.py). The default, hybrid with dense weight 0.65
over child windows of 128 word pieces in passages of up to 254, and a quiz item searched as its stem and as
its stem with options (`search_many`), is what holds under the independent evaluation
(`python -m eval.courses_benchmark`; docs/results/retrieval.md).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rag.errors import RagError
from rag.index.embeddings import Embedder
from rag.index.store import VectorIndex, generation_stamp
from rag.ingest.chunking import Chunk
from rag.ingest.locations import location_of, passage_label
from rag.retrieval.fusion import DENSE_WEIGHT, DUPLICATE_RATIO, collapse_near_duplicates, rrf
from rag.retrieval.parent_child import Passages

MODES = ("dense", "bm25", "hybrid")
MULTI_QUERY_DEPTH = 30  # passages per wording that `search_many` fuses
RRF_K = 60  # the fusion constant of `search_many` (Cormack et al. 2009)


@dataclass
class Hit:
    """One retrieved passage: the chunk, its score in the chosen mode, its rank (1 = best)."""

    chunk: Chunk
    score: float
    rank: int
    scores: dict[str, float] = field(default_factory=dict)  # per-retriever scores, e.g. dense cosine
    match: str = ""  # the child window (small-to-big) that ranked the passage; "" when the passage is one chunk

    @property
    def snippet(self) -> str:
        """What to show of the passage: its text from the window that matched on (a window can be as short
        as a slide title), else the whole passage."""
        at = self.chunk.text.find(self.match[:80]) if self.match else -1
        return self.chunk.text[at:] if at > 0 else self.chunk.text

    @property
    def label(self) -> str:
        """The passage as a reader names it: "slides.pptx · slide 12 · Fine-tuning vs prompting"
        (rag.ingest.locations.passage_label)."""
        c = self.chunk
        return passage_label(c.source, c.section, c.metadata, c.text)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (`rag search --json`): the passage, its scores, its location (page, slide or cell and
        their `_end`, where the file has them) and its label."""
        return {"chunk_id": self.chunk.id, "text": self.chunk.text, "score": round(self.score, 6),
                "rank": self.rank, "source": self.chunk.source, "section": self.chunk.section,
                "span": list(self.chunk.span), "scores": {k: round(v, 6) for k, v in self.scores.items()},
                **({"match": self.match} if self.match else {}),
                **location_of(self.chunk.metadata), "label": self.label}


@dataclass(eq=False)
class Retriever:
    """Searches one index directory; reloads by itself when `rag index` publishes a new generation.

    :param index_dir: the index directory (its CURRENT generation is loaded).
    :param embedder: the embedder the index was built with (checked against the manifest).
    :param mode: default mode, one of MODES.
    :param top_k: default number of passages.
    :param rrf_k: the reciprocal rank fusion constant (hybrid).
    :param auto_reload: switch to a newly published generation on the next search.
    :param dense_weight: hybrid: weight of the dense ranking in the fusion; BM25 gets 1 - dense_weight.
    :param collapse_duplicates: drop passages near-identical to a better-ranked one.
    :raises RagError: unknown mode, a weight outside [0, 1], or no loadable index.
    """

    index_dir: Path
    embedder: Embedder
    mode: str = "hybrid"
    top_k: int = 5
    rrf_k: int = 60
    auto_reload: bool = True
    dense_weight: float = DENSE_WEIGHT
    collapse_duplicates: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _passages: weakref.WeakKeyDictionary[VectorIndex, Passages] = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False)
    _index: VectorIndex = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RagError(f"unknown retrieval mode {self.mode!r}: use one of {', '.join(MODES)}")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise RagError(f"dense_weight {self.dense_weight} is outside 0..1: use e.g. 0.8 (dense) against 0.2 "
                           f"(BM25)")
        self.index_dir = Path(self.index_dir)
        self._index = VectorIndex.load(self.index_dir, self.embedder)

    @property
    def index(self) -> VectorIndex:
        """The live index; swapped for the new generation when CURRENT changed (old one serves until then)."""
        if self.auto_reload:
            stamp = generation_stamp(self.index_dir)
            if stamp and stamp != self._index.generation:
                with self._lock:
                    if stamp != self._index.generation:
                        try:
                            self._index = VectorIndex.load(self.index_dir, self.embedder)
                        except RagError:
                            pass  # keep answering from the index we have
        return self._index

    def passages(self, index: VectorIndex | None = None) -> Passages:
        """The passages of `index` (default: the live one), grouped once per loaded generation."""
        index = index if index is not None else self.index
        got = self._passages.get(index)
        if got is None:
            got = self._passages[index] = Passages.of(index.chunks)
        return got

    def term_coverage(self, query: str) -> float:
        """Share of `query`'s information (IDF-weighted terms) whose terms occur in the live index's text.

        The answering's abstention reads it (rag.answering.plan): 1.0 means every term, rare ones included,
        is in the course's vocabulary, a sign that the question is about the course even when the embedder
        does not know its jargon.

        :param query: the retrieval query.
        :returns: a share in [0, 1]; 0.0 for an empty query or index.
        """
        return self.index.bm25.term_coverage(query)

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The top-k passages for `query`, best first.

        :param query: the question.
        :param k: passages to return (default top_k).
        :param mode: dense, bm25 or hybrid (default: the retriever's mode).
        :returns: Hits whose chunk is the passage (the parent when the index has child windows); `score` is
            the mode's score, `scores["dense"]` the best child cosine in every mode.
        :raises RagError: unknown mode.
        """
        k = k or self.top_k
        mode = mode or self.mode
        if mode not in MODES:
            raise RagError(f"unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}")
        index = self.index
        if not query.strip() or not len(index):
            return []
        groups = self.passages(index)
        depth = max(k * 4, 50)  # passages to gather per ranking: room for fusion and collapse
        chunk_depth = depth * groups.fanout
        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        matched: dict[int, int] = {}  # passage -> position of the child window that ranked it
        qvec = None
        if mode in ("dense", "hybrid"):
            qvec = self.embedder.encode_query(query)
            dense_chunks = index.search_dense(qvec, chunk_depth)
            dense, matched = groups.best(dense_chunks), groups.first_members(dense_chunks)
        if mode in ("bm25", "hybrid"):
            lexical_chunks = index.bm25.search(query, chunk_depth)
            lexical = groups.best(lexical_chunks)
            matched = {**groups.first_members(lexical_chunks), **matched}  # the dense window first
        dense_score = dict(dense)
        bm25_score = dict(lexical)
        if mode == "dense":
            ranked = dense
        elif mode == "bm25":
            ranked = lexical
        else:
            ranked = rrf([[p for p, _ in dense], [p for p, _ in lexical]], self.rrf_k,
                         weights=[self.dense_weight, 1.0 - self.dense_weight])
        if self.collapse_duplicates:
            ranked = collapse_near_duplicates(ranked, lambda p: groups.passages[p].text, k, DUPLICATE_RATIO)
        else:
            ranked = ranked[:k]
        # Dense cosine is the calibrated relevance signal (abstention and displayed scores use it) in
        # every mode: fill it in for passages the dense side did not return.
        if any(p not in dense_score for p, _ in ranked):
            if qvec is None:
                qvec = self.embedder.encode_query(query)
            for p, _ in ranked:
                if p not in dense_score:
                    dense_score[p] = groups.dense_score(p, index.vectors, qvec)
        hits = []
        for rank, (p, score) in enumerate(ranked, start=1):
            scores = {"dense": dense_score[p]}
            if p in bm25_score:
                scores["bm25"] = bm25_score[p]
            child = index.chunks[matched[p]] if p in matched else None
            match = child.text if child is not None and child.id != groups.passages[p].id else ""
            hits.append(Hit(groups.passages[p], float(score), rank, scores, match))
        return hits

    def search_many(self, queries: Sequence[str], k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The top-k passages for several wordings of one question: each searched alone, the rankings fused.

        Reciprocal rank fusion (k 60, equal weights; Cormack et al. 2009) of the queries' rankings, each
        MULTI_QUERY_DEPTH deep: a passage high in any ranking comes up. A quiz item is searched as its stem
        and as its stem with its options (docs/results/retrieval.md): the stem alone misses the passage
        that names the answer, the options alone pull in passages about the wrong ones.

        :param queries: the wordings, most faithful first (duplicates and empty ones are dropped).
        :param k: passages to return (default top_k).
        :param mode: dense, bm25 or hybrid (default: the retriever's mode).
        :returns: Hits as `search` gives them (each keeps its per-retriever scores, so `scores["dense"]` is
            its cosine with the query that found it best), re-ranked 1..k by the fused score.
        :raises RagError: unknown mode.
        """
        k = k or self.top_k
        wordings = [q for q in dict.fromkeys(queries) if q.strip()]
        if len(wordings) <= 1:
            return self.search(wordings[0] if wordings else "", k, mode)
        runs = [self.search(q, max(k, MULTI_QUERY_DEPTH), mode) for q in wordings]
        best: dict[int, Hit] = {}
        for run in runs:
            for h in run:
                if h.chunk.id not in best or h.scores.get("dense", -1.0) > best[h.chunk.id].scores.get("dense", -1.0):
                    best[h.chunk.id] = h
        fused = rrf([[h.chunk.id for h in run] for run in runs], RRF_K)[:k]
        return [replace(best[i], score=float(s), rank=r) for r, (i, s) in enumerate(fused, start=1)]
