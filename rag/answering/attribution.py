"""Citations that do not depend on the model's obedience: attribute each answer sentence to the passages
that support it (embedding similarity or verbatim overlap), and drop [n] markers that point at nothing."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from rapidfuzz import fuzz

from rag.retrieval.retriever import Hit

_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n|\n(?=\s*[-*•]\s)")
_MARKER = re.compile(r"\s?\[(\s*\d+\s*(?:[,;]\s*\d+\s*)*)\]")
SIM_THRESHOLD = 0.6
OVERLAP_THRESHOLD = 0.8
MIN_WORDS = 3


class Encoder(Protocol):
    """What answering needs of the retriever's embedder (the Retriever's `embedder`): sentences as vectors."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` as an (n, dim) array of unit vectors (a dot product is a cosine)."""
        ...


@dataclass
class Support:
    """One answer sentence and the passage (1-based number) that supports it, with the passage's own words."""

    sentence: str
    passage: int
    score: float
    snippet: str


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT_END.split(text) if s and s.strip()]


def clean_markers(answer: str, n_passages: int) -> str:
    """Keep [n] markers that name a real passage; remove the rest."""

    def fix(m: re.Match) -> str:
        nums = [int(x) for x in re.findall(r"\d+", m.group(1))]
        good = [str(n) for n in nums if 1 <= n <= n_passages]
        return f" [{', '.join(good)}]" if good else ""

    return _MARKER.sub(fix, answer)


def attribute(answer: str, hits: Sequence[Hit], embedder: Encoder) -> list[Support]:
    """For each answer sentence of a few words, the best supporting passage if support is strong enough."""
    sentences = [s for s in split_sentences(_MARKER.sub("", answer)) if len(s.split()) >= MIN_WORDS]
    if not sentences or not hits:
        return []
    passage_sents: list[tuple[int, str]] = []
    for i, h in enumerate(hits, start=1):
        for s in split_sentences(h.chunk.text) or [h.chunk.text]:
            passage_sents.append((i, s))
    vecs = embedder.encode(sentences + [s for _, s in passage_sents])
    sims = vecs[: len(sentences)] @ vecs[len(sentences):].T
    out = []
    for a, sent in enumerate(sentences):
        j = int(np.argmax(sims[a]))
        best_sim = float(sims[a, j])
        # Verbatim copying scores high on overlap even where the embedding is lukewarm.
        lex = [fuzz.partial_ratio(sent.lower(), s.lower()) / 100 if len(s) >= len(sent) * 0.5 else 0.0
               for _, s in passage_sents]
        k = int(np.argmax(lex))
        if lex[k] >= OVERLAP_THRESHOLD and lex[k] >= best_sim:
            out.append(Support(sent, passage_sents[k][0], lex[k], passage_sents[k][1]))
        elif best_sim >= SIM_THRESHOLD:
            out.append(Support(sent, passage_sents[j][0], best_sim, passage_sents[j][1]))
    return out
