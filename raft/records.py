"""RAFT sample records (ARCHITECTURE.md, "RAFT sample record"): field names, file names, reading, seeded RNGs."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from rag.common.atomic import write_json_atomic, write_text_atomic  # noqa: F401  (write_json_atomic: used by raft.generate)

DATASET = "dataset.jsonl"
PROGRESS = "progress.jsonl"
REJECTED = "rejected.jsonl"  # the teacher's replies that were rejected, with the reason (for inspection)
RUN = "run.json"
STATS = "stats.json"
RECORD_FIELDS = ("id", "type", "question", "context", "oracle_context", "oracle_present", "oracle_index",
                 "distractor_ids", "cot_answer", "final_answer", "quotes_verified", "instruction",
                 "source_chunk_id", "source", "generator_model", "seed")


def derive_rng(seed: int, *parts: Any) -> random.Random:
    """A random generator that depends only on (seed, parts): order, resume and threads don't change it."""
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big"))


def title_of(chunk) -> str:
    return chunk.source + (f" > {chunk.section}" if chunk.section else "")


def read_jsonl(path: Path) -> list[dict]:
    """Complete JSON lines of `path` (a torn last line from a kill is ignored)."""
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    return rows


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} before, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]
