"""Rank fusion and near-duplicate collapse: the two steps between the raw rankings and the top-k.

Weighted reciprocal rank fusion (Cormack, Clarke & Büttcher 2009, with per-ranking weights as in
Elasticsearch's and Vespa's weighted RRF): each ranking adds weight / (k + rank). The product's weights
(`Settings.dense_weight`, dense 0.65 against BM25 0.35) are chosen on the independent courses by the
decision rule of docs/guide/evaluate.md (`python -m eval.courses_benchmark`, docs/results/retrieval.md):
against 0.8, MRR@10 at the evidence grain rose by +0.017 [+0.003, +0.031] pooled over the independent
courses and fell on none; even weights (0.5) did not win (+0.020 [-0.004, +0.043]). Questions by other
authors share exact terms with the sentence that answers them, where BM25 alone often ranks it first.

Collapse: a course often holds the same text twice (a file and its copy, slides and the notes made
from them); two copies of one passage in the top-k waste the prompt. A passage whose whitespace- and
case-normalised text is at least `threshold` similar (rapidfuzz Indel ratio) to a better-ranked one
is dropped, and the next passage moves up. On the course + its near-copy in shared seeds (quiz-dup),
this lifted hybrid recall@5 from 0.552 to 0.621 and MRR@10 from 0.357 to 0.397; without duplicates it
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from rapidfuzz import fuzz

from rag.common.text import normalize_ws

T = TypeVar("T", bound=Hashable)

DUPLICATE_RATIO = 90.0
# hybrid: the dense ranking's weight, BM25 gets the rest; chosen on the independent courses (module docstring).
# The product's one default: Settings.dense_weight and Retriever.dense_weight both read it.
DENSE_WEIGHT = 0.65


def rrf(rankings: Sequence[Sequence[T]], k: int = 60, weights: Sequence[float] | None = None) -> list[tuple[T, float]]:
    """Weighted reciprocal rank fusion: sum over rankings of weight / (k + rank), best first.

    :param rankings: lists of items, best first (rank 1 = first).
    :param k: the RRF constant (60 in the paper); larger flattens the rank differences.
    :param weights: one weight per ranking (default 1 each).
    :returns: (item, fused score) pairs sorted by score descending, ties by item.
    :raises ValueError: when the number of weights differs from the number of rankings.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    fused: dict[T, float] = {}
    for ranking, w in zip(rankings, weights):
        if w == 0:
            continue
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + w / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def collapse_near_duplicates(ranked: Sequence[tuple[T, float]], text_of: Callable[[T], str], k: int,
                             threshold: float = DUPLICATE_RATIO) -> list[tuple[T, float]]:
    """The first `k` items of `ranked` whose texts are not near-identical to a better-ranked kept item.

    :param ranked: (item, score) best first.
    :param text_of: the text of an item.
    :param k: how many to keep.
    :param threshold: rapidfuzz ratio (0-100) at or above which two normalised texts are duplicates.
    :returns: at most k (item, score) pairs, in the original order.
    """
    kept: list[tuple[T, float]] = []
    texts: list[str] = []
    for item, score in ranked:
        t = normalize_ws(text_of(item)).lower()
        n = len(t)
        # Indel ratio >= r needs the lengths within r of each other: skip the comparison otherwise.
        if any(min(n, len(u)) * 200 >= threshold * (n + len(u)) and fuzz.ratio(t, u, score_cutoff=threshold)
               for u in texts):
            continue
        kept.append((item, score))
        texts.append(t)
        if len(kept) == k:
            break
    return kept
