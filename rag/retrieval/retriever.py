"""Retriever: dense (FAISS), bm25 (bm25s) or hybrid (reciprocal rank fusion); returns ranked Hits."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import RagError
from rag.index.embeddings import Embedder
from rag.index.store import VectorIndex, generation_stamp
from rag.ingest.chunking import Chunk

MODES = ("dense", "bm25", "hybrid")


@dataclass
class Hit:
    """One retrieved passage: the chunk, its score in the chosen mode, its rank (1 = best)."""

    chunk: Chunk
    score: float
    rank: int
    scores: dict[str, float] = field(default_factory=dict)  # per-retriever scores, e.g. dense cosine

    def to_dict(self) -> dict[str, Any]:
        return {"chunk_id": self.chunk.id, "text": self.chunk.text, "score": round(self.score, 6),
                "rank": self.rank, "source": self.chunk.source, "section": self.chunk.section,
                "span": list(self.chunk.span), "scores": {k: round(v, 6) for k, v in self.scores.items()},
                **({"page": self.chunk.metadata["page"]} if "page" in self.chunk.metadata else {})}


def rrf(rankings: list[list[int]], k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal rank fusion (Cormack et al. 2009): sum of 1/(k + rank) over the rankings."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, pos in enumerate(ranking, start=1):
            fused[pos] = fused.get(pos, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


class Retriever:
    """Searches one index directory; reloads by itself when `rag index` publishes a new generation."""

    def __init__(self, index_dir: Path, embedder: Embedder, mode: str = "hybrid", top_k: int = 5, rrf_k: int = 60,
                 auto_reload: bool = True):
        if mode not in MODES:
            raise RagError(f"unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}")
        self.index_dir = Path(index_dir)
        self.embedder = embedder
        self.mode = mode
        self.top_k = top_k
        self.rrf_k = rrf_k
        self.auto_reload = auto_reload
        self._lock = threading.Lock()
        self._index = VectorIndex.load(self.index_dir, embedder)

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

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The top-k passages for `query`, best first."""
        k = k or self.top_k
        mode = mode or self.mode
        if mode not in MODES:
            raise RagError(f"unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}")
        index = self.index
        if not query.strip() or not len(index):
            return []
        depth = max(k * 4, 50)
        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        qvec = None
        if mode in ("dense", "hybrid"):
            qvec = self.embedder.encode_query(query)
            dense = index.search_dense(qvec, depth if mode == "hybrid" else k)
        if mode in ("bm25", "hybrid"):
            lexical = index.bm25.search(query, depth if mode == "hybrid" else k)
        dense_score = dict(dense)
        bm25_score = dict(lexical)
        if mode == "dense":
            ranked = dense[:k]
        elif mode == "bm25":
            ranked = lexical[:k]
        else:
            ranked = rrf([[p for p, _ in dense], [p for p, _ in lexical]], self.rrf_k)[:k]
        # Dense cosine is the calibrated relevance signal (abstention and displayed scores use it) in
        # every mode: fill it in for hits the dense side did not return.
        if any(p not in dense_score for p, _ in ranked):
            if qvec is None:
                qvec = self.embedder.encode_query(query)
            for p, _ in ranked:
                if p not in dense_score:
                    dense_score[p] = float(index.vectors[p] @ qvec)
        hits = []
        for rank, (pos, score) in enumerate(ranked, start=1):
            scores = {}
            if pos in dense_score:
                scores["dense"] = dense_score[pos]
            if pos in bm25_score:
                scores["bm25"] = bm25_score[pos]
            hits.append(Hit(index.chunks[pos], float(score), rank, scores))
        return hits
