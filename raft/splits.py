"""Train/validation/test splits of a RAFT dataset, by source chunk: `raft export`, `raft eval` and `raft train`
use the same function with the same defaults, so no evaluated question's oracle chunk is trained on."""

from __future__ import annotations

import math

from raft.records import DEFAULT_SPLIT, derive_rng
from rag.errors import RagError

SPLIT_NAMES = ("train", "validation", "test")


def parse_split(text: str) -> list[float]:
    """'0.8,0.1,0.1' -> [0.8, 0.1, 0.1]: 1 to 3 finite, non-negative fractions summing to 1."""
    try:
        parts = [float(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise RagError(f"--split must be fractions like {DEFAULT_SPLIT}, got {text!r}") from None
    if (not 1 <= len(parts) <= 3 or not all(math.isfinite(p) and p >= 0 for p in parts)
            or abs(sum(parts) - 1.0) > 1e-6):
        raise RagError(f"--split needs 1 to 3 non-negative fractions (train,validation,test) summing to 1, "
                       f"like {DEFAULT_SPLIT}; got {text!r}")
    return parts


def split_by_chunk(records: list[dict], fractions: list[float], seed: int = 0) -> dict[str, list[dict]]:
    """Assign whole source chunks to splits in seeded order; sizes follow `fractions` by chunk count."""
    chunk_ids = sorted({r["source_chunk_id"] for r in records}, key=lambda c: derive_rng(seed, "split", c).random())
    bounds, acc = [], 0.0
    for f in fractions:
        acc += f
        bounds.append(round(acc * len(chunk_ids)))
    bounds[-1] = len(chunk_ids)
    where: dict[int, str] = {}
    start = 0
    for name, end in zip(SPLIT_NAMES, bounds):
        for cid in chunk_ids[start:end]:
            where[cid] = name
        start = end
    out: dict[str, list[dict]] = {name: [] for name in SPLIT_NAMES[: len(fractions)]}
    for r in records:
        out[where[r["source_chunk_id"]]].append(r)
    return out
