"""BM25 side of the index (bm25s, saved in its own numpy/JSON format: no pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

FORMAT = {"library": "bm25s", "stemmer": "english", "stopwords": "en", "version": 1}


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased, stop-worded, Snowball-stemmed word tokens, identical for passages and queries."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


class BM25Index:
    """Okapi BM25 over passage texts; positions are the chunk order of the index."""

    def __init__(self, retriever, n_docs: int):
        self.retriever = retriever
        self.n_docs = n_docs

    @classmethod
    def build(cls, texts: Sequence[str]) -> "BM25Index":
        import bm25s

        retriever = bm25s.BM25()
        tokens = tokenize(texts)
        if texts:
            # bm25s cannot index an all-empty corpus; a placeholder token keeps it valid.
            if not any(tokens):
                tokens = [["\u2400"] for _ in tokens]
            retriever.index(tokens, show_progress=False)
        return cls(retriever, len(texts))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.n_docs:
            self.retriever.save(str(folder), allow_pickle=False, show_progress=False)
        (folder / "format.json").write_text(json.dumps({**FORMAT, "n_docs": self.n_docs}))

    @classmethod
    def load(cls, folder: Path) -> "BM25Index":
        import bm25s

        meta = json.loads((folder / "format.json").read_text())
        if meta.get("library") != "bm25s":
            raise ValueError(f"{folder} is not a bm25s index")
        n = int(meta["n_docs"])
        retriever = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False) if n else bm25s.BM25()
        return cls(retriever, n)

    def term_coverage(self, query: str) -> float:
        """Share of the query's information (IDF-weighted terms) whose terms occur in the indexed text.

        1.0 means every term, rare ones included, is in the corpus vocabulary: a cheap signal that a
        question is about the course even when the embedder does not know its jargon (e.g. "PEFT").
        """
        toks = tokenize([query])[0]
        if not toks or not self.n_docs:
            return 0.0
        vocab = self.retriever.vocab_dict
        indptr = self.retriever.scores["indptr"]
        n = self.n_docs
        total = covered = 0.0
        for tok in toks:
            col = vocab.get(tok)
            df = int(indptr[col + 1] - indptr[col]) if col is not None else 0
            idf = float(np.log((n - df + 0.5) / (df + 0.5) + 1.0))
            total += idf
            if df:
                covered += idf
        return covered / total if total else 0.0

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """Top-k (position, score) pairs with a positive score, best first."""
        if not self.n_docs:
            return []
        toks = tokenize([query])[0]
        if not toks:
            return []
        scores = self.retriever.get_scores(toks)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]
