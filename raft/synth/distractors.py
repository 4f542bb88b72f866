"""Distractor strategies over a loaded rag index: random (the reference's uniform choice), hard (the
oracle's nearest neighbours in the FAISS index), mixed (half hard, half random).

A sampler is called as `sampler(oracle_pos, k, rng, answer=[texts]) -> [positions]` (positions in
`index.chunks`). It never returns the oracle, a near-duplicate of the oracle, a chunk that contains the
answer (one of the `answer` texts: the verified quotes), or the same text twice; it returns fewer than `k`
only when the index has too few eligible chunks.
"""

from __future__ import annotations

import math
import random

import numpy as np
from rapidfuzz import fuzz

from rag.common.text import normalize_ws

STRATEGIES = ("random", "hard", "mixed")
DUP_COSINE = 0.95  # above this cosine a chunk is a near-duplicate of the oracle
DUP_RATIO = 90  # rapidfuzz ratio above which a chunk's text is a near-duplicate of the oracle's


class DistractorSampler:
    """Pick k distractor chunks for an oracle chunk of `index` (a rag.index.VectorIndex)."""

    def __init__(self, index, strategy: str = "hard", pool: int = 50) -> None:
        if strategy not in STRATEGIES:
            from rag.errors import RagError

            raise RagError(f"unknown distractor strategy {strategy!r}: use {', '.join(STRATEGIES)}")
        self.index = index
        self.strategy = strategy
        self.pool = pool
        self._norm = [normalize_ws(c.text).lower() for c in index.chunks]

    # -- eligibility ---------------------------------------------------------------------------

    def _same_text(self, a: int, b: int) -> bool:
        return self._norm[a] == self._norm[b]

    def near_duplicate(self, oracle: int, pos: int) -> bool:
        """True if chunk `pos` is (nearly) the oracle: same position, cosine > 0.95 or text ratio > 90."""
        if pos == oracle or self._same_text(oracle, pos):
            return True
        cos = float(np.dot(self.index.vectors[oracle], self.index.vectors[pos]))
        return cos > DUP_COSINE or fuzz.ratio(self._norm[oracle], self._norm[pos]) > DUP_RATIO

    def _same_section(self, oracle: int, pos: int) -> bool:
        a, b = self.index.chunks[oracle], self.index.chunks[pos]
        return a.source == b.source and a.section == b.section

    def contains_answer(self, pos: int, answer: list[str]) -> bool:
        """True if chunk `pos` holds one of the answer texts (whitespace- and case-insensitive): a second oracle."""
        return any(a and a in self._norm[pos] for a in answer)

    def _take(self, candidates, oracle: int, k: int, chosen: list[int], answer: list[str] = ()) -> list[int]:
        for pos in candidates:
            if len(chosen) >= k:
                break
            if (pos in chosen or self.near_duplicate(oracle, pos) or any(self._same_text(pos, c) for c in chosen)
                    or self.contains_answer(pos, answer)):
                continue
            chosen.append(pos)
        return chosen

    # -- strategies ----------------------------------------------------------------------------

    def hard(self, oracle: int, k: int, chosen: list[int] | None = None, answer: list[str] = ()) -> list[int]:
        """The nearest non-oracle chunks by cosine, skipping near-duplicates and chunks holding the answer.

        Without answer texts, chunks of the oracle's own section are skipped instead (they likely hold it).
        """
        chosen = list(chosen or [])
        target = len(chosen) + k
        n = len(self.index.chunks)
        want = min(n, max(self.pool, 4 * k + 8))
        while True:
            hits = self.index.search_dense(self.index.vectors[oracle], want)
            cands = [pos for pos, _ in hits if answer or not self._same_section(oracle, pos)]
            self._take(cands, oracle, target, chosen, answer)
            if len(chosen) >= target or want >= n:
                return chosen
            want = min(n, want * 4)

    def uniform(self, oracle: int, k: int, rng: random.Random, chosen: list[int] | None = None,
                answer: list[str] = ()) -> list[int]:
        """Uniform choice among all other chunks (the reference behaviour), minus near-duplicates of the oracle."""
        chosen = list(chosen or [])
        order = list(range(len(self.index.chunks)))
        rng.shuffle(order)
        return self._take(order, oracle, len(chosen) + k, chosen, answer)

    def __call__(self, oracle: int, k: int, rng: random.Random, answer: list[str] | None = None) -> list[int]:
        if k <= 0:
            return []
        ans = [normalize_ws(a).lower() for a in (answer or []) if len(normalize_ws(a)) >= 8]
        if self.strategy == "random":
            return self.uniform(oracle, k, rng, answer=ans)
        if self.strategy == "hard":
            chosen = self.hard(oracle, k, answer=ans)
        else:  # mixed: the harder half first, the rest uniform
            chosen = self.hard(oracle, math.ceil(k / 2), answer=ans)
        if len(chosen) < k:  # mixed's random half, or too few eligible neighbours: fill uniformly
            chosen = self.uniform(oracle, k - len(chosen), rng, chosen, answer=ans)
        return chosen
