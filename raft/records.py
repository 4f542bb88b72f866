"""RAFT sample records (ARCHITECTURE.md, "RAFT sample record"): the record type and its check, file names,
the default split, reading a dataset, seeded RNGs.

A dataset.jsonl is read by one rule everywhere (export, eval, train): a torn last line (a crash) is dropped,
any other bad line (not a JSON object, a missing or mistyped field, a duplicate id) is refused with
"FILE line N: ..." (rag.common.runfolder describes the policy; `raft generate` moves such lines aside).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Iterable, TypedDict

from rag.common.runfolder import read_jsonl, scan_jsonl  # noqa: F401  (read_jsonl: the project's JSONL reader)
from rag.errors import RagError

DATASET = "dataset.jsonl"
PROGRESS = "progress.jsonl"
REJECTED = "rejected.jsonl"  # the teacher's replies that were rejected, with the reason (for inspection)
RUN = "run.json"
STATS = "stats.json"
DEFAULT_SPLIT = "0.8,0.1,0.1"  # train,validation,test fractions by source chunk: export, eval and train agree


class Context(TypedDict):
    title: list[str]
    sentences: list[str]  # the document texts, in the order shown


class _Required(TypedDict):
    id: str
    type: str
    question: str
    context: Context
    oracle_context: str
    oracle_present: bool
    oracle_index: int  # -1 when the oracle was dropped
    distractor_ids: list[int]
    cot_answer: str
    final_answer: str
    quotes_verified: int
    instruction: str
    source_chunk_id: int
    source: str
    generator_model: str
    seed: int


class RaftRecord(_Required, total=False):
    """One line of dataset.jsonl."""

    quotes_snapped: int


# field -> (check, what it must be); RECORD_FIELDS are the required ones, in the order of ARCHITECTURE.md
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_TEXT = (lambda v: isinstance(v, str), "a string")
_INT = (_is_int, "an integer")
FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "id": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "type": _TEXT,
    "question": _TEXT,
    "context": (lambda v: isinstance(v, dict) and _is_str_list(v.get("title")) and _is_str_list(v.get("sentences")),
                "an object with lists of strings `title` and `sentences`"),
    "oracle_context": _TEXT,
    "oracle_present": (lambda v: isinstance(v, bool), "true or false"),
    "oracle_index": _INT,
    "distractor_ids": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of integers"),
    "cot_answer": _TEXT,
    "final_answer": _TEXT,
    "quotes_verified": _INT,
    "instruction": _TEXT,
    "source_chunk_id": _INT,
    "source": _TEXT,
    "generator_model": _TEXT,
    "seed": _INT,
}
RECORD_FIELDS = tuple(FIELD_CHECKS)
OPTIONAL_FIELDS = {"quotes_snapped": _INT}


def _shown(v: Any) -> str:
    kind = {type(None): "null", bool: "true/false", list: "a list", dict: "an object", str: "a string",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)
    text = repr(v)
    return kind if v is None or isinstance(v, bool) else f"{kind} ({text[:40] + '...' if len(text) > 40 else text})"


def check_record(rec: dict) -> None:
    """ValueError naming the first missing or mistyped field of a loaded record (the validator of dataset.jsonl)."""
    missing = [k for k in RECORD_FIELDS if k not in rec]
    if missing:
        raise ValueError(f"not a RAFT record: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    for name, (ok, what) in (*FIELD_CHECKS.items(), *((k, c) for k, c in OPTIONAL_FIELDS.items() if k in rec)):
        if not ok(rec[name]):
            raise ValueError(f"field {name} must be {what}, got {_shown(rec[name])}")


def check_unique_ids(records: Iterable[dict], source: Path | str, numbers: list[int] | None = None,
                     unit: str = "line") -> None:
    """The one duplicate-id rule of export, eval and train: RagError on the second record with an id."""
    first: dict[Any, int] = {}
    for i, rec in enumerate(records):
        at = numbers[i] if numbers is not None else i + 1
        rid = rec.get("id")
        if rid in first:
            raise RagError(f"{source} {unit} {at}: duplicate id {rid!r} (also on {unit} {first[rid]}): "
                           "each record needs its own id; delete one of them or regenerate the dataset")
        try:
            first[rid] = at
        except TypeError:  # an unhashable id (a list): not a valid record
            raise RagError(f"{source} {unit} {at}: field id must be a non-empty string, got {_shown(rid)}") from None


def load_records(path: Path) -> list[RaftRecord]:
    """The valid records of a dataset.jsonl, or a one-line RagError naming the file, line and field."""
    scan = scan_jsonl(Path(path), check_record)
    scan.refuse_damage("repair or delete that line (`raft generate` on the same folder moves damaged lines aside)")
    check_unique_ids(scan.rows, path, scan.numbers)
    return scan.rows  # type: ignore[return-value]


def derive_rng(seed: int, *parts: Any) -> random.Random:
    """A random generator that depends only on (seed, parts): order, resume and threads don't change it."""
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big"))


def oracle_position(record: dict) -> int:
    """Where the record's oracle is among its documents (`context.sentences`); -1 when the record dropped it."""
    texts, oracle = record["context"]["sentences"], record["oracle_context"]
    at = int(record.get("oracle_index", -1)) if record.get("oracle_present") else -1
    if 0 <= at < len(texts) and texts[at] == oracle:
        return at
    return texts.index(oracle) if oracle in texts else -1


def documents_with_oracle(record: dict, seed: int = 0, purpose: str = "eval-oracle") -> tuple[list[str], int]:
    """(documents, oracle position): the record's documents with its oracle shown.

    A record that kept its oracle is returned as stored. One that dropped it (and so holds one more
    distractor) gets the oracle back in place of one distractor, at a position drawn from
    derive_rng(seed, purpose, id): the same every run, independent of order. `purpose` separates the draws
    of `raft eval` ("eval-oracle") from those of `raft train --oracle-fraction`.
    """
    texts = list(record["context"]["sentences"])
    at = oracle_position(record)
    if at >= 0:
        return texts, at
    if not texts:
        return [record["oracle_context"]], 0
    pos = derive_rng(seed, purpose, record["id"]).randrange(len(texts))
    texts[pos] = record["oracle_context"]
    return texts, pos


def documents_without_oracle(record: dict) -> list[str]:
    """The record's documents with the oracle (and any distractor of the oracle's very text) left out."""
    at, oracle = oracle_position(record), record["oracle_context"]
    return [t for i, t in enumerate(record["context"]["sentences"]) if i != at and t != oracle]


def title_of(chunk) -> str:
    return chunk.source + (f" > {chunk.section}" if chunk.section else "")


__all__ = ["DATASET", "PROGRESS", "REJECTED", "RUN", "STATS", "DEFAULT_SPLIT", "RaftRecord", "RECORD_FIELDS",
           "check_record", "check_unique_ids", "load_records", "read_jsonl", "derive_rng", "oracle_position",
           "documents_with_oracle", "documents_without_oracle", "title_of"]
