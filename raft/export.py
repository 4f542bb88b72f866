"""Export a RAFT dataset folder as training/eval files: hf | chat | completion | eval, JSONL or Parquet.

Splits are made by source chunk (seeded), so no oracle chunk is in two splits. Every file loads with
`datasets.load_dataset("json" | "parquet", data_files=...)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from raft.prompts import document_block
from raft.records import DATASET, derive_rng, read_jsonl
from rag.errors import RagError

FORMATS = ("hf", "chat", "completion", "eval")
TYPES = ("jsonl", "parquet")
SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_STOP = "<STOP>"
HF_COLUMNS = ("id", "type", "question", "context", "oracle_context", "cot_answer", "instruction",
              "oracle_present", "oracle_index", "distractor_ids", "final_answer", "quotes_verified",
              "source_chunk_id", "source", "generator_model", "seed")


def parse_split(text: str) -> list[float]:
    """'0.8,0.1,0.1' -> [0.8, 0.1, 0.1]: 1 to 3 non-negative fractions summing to 1."""
    try:
        parts = [float(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise RagError(f"--split must be fractions like 0.8,0.1,0.1, got {text!r}") from None
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise RagError(f"--split needs 1 to 3 non-negative fractions (train,validation,test) summing to 1, got {text!r}")
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


def to_row(rec: dict, fmt: str, system_prompt: str | None = None, stop: str = DEFAULT_STOP) -> dict[str, Any]:
    """One exported row of `fmt` from a sample record."""
    if fmt == "hf":
        return {k: rec.get(k) for k in HF_COLUMNS}
    if fmt == "chat":
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": rec["instruction"]},
            {"role": "assistant", "content": rec["cot_answer"]},
        ]
        return {"id": rec["id"], "messages": messages}
    if fmt == "completion":
        return {"id": rec["id"], "prompt": rec["instruction"], "completion": rec["cot_answer"] + stop}
    if fmt == "eval":
        return {"id": rec["id"], "question": rec["question"], "gold_final_answer": rec["final_answer"],
                "context": document_block(rec["context"]["sentences"]), "instruction": rec["instruction"],
                "oracle_present": rec["oracle_present"]}
    raise RagError(f"unknown export format {fmt!r}: use {', '.join(FORMATS)}")


def _write(rows: list[dict], path: Path, kind: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if kind == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def export(dataset_dir: Path, fmt: str = "hf", kind: str = "jsonl", split: str = "0.8,0.1,0.1",
           out_dir: Path | None = None, system_prompt: str | None = None, stop: str = DEFAULT_STOP,
           seed: int = 0) -> dict[str, Any]:
    """Write one file per non-empty split; return {"files": {split: path}, "rows": {split: n}}."""
    if fmt not in FORMATS:
        raise RagError(f"unknown export format {fmt!r}: use {', '.join(FORMATS)}")
    if kind not in TYPES:
        raise RagError(f"unknown export type {kind!r}: use {', '.join(TYPES)}")
    fractions = parse_split(split)
    source = Path(dataset_dir) / DATASET
    if not source.is_file():
        raise RagError(f"no {DATASET} in {dataset_dir}: run `raft generate FOLDER --out {dataset_dir}` first")
    records = read_jsonl(source)
    if not records:
        raise RagError(f"{source} has no samples yet: nothing to export")
    out = Path(out_dir) if out_dir else Path(dataset_dir) / "export" / f"{fmt}-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    files, rows = {}, {}
    for name in SPLIT_NAMES:  # no stale split from an earlier export with other fractions
        (out / f"{name}.{kind}").unlink(missing_ok=True)
    for name, recs in split_by_chunk(records, fractions, seed).items():
        if not recs:
            continue
        path = out / f"{name}.{kind}"
        _write([to_row(r, fmt, system_prompt, stop) for r in recs], path, kind)
        files[name], rows[name] = str(path), len(recs)
    return {"format": fmt, "type": kind, "dir": str(out), "files": files, "rows": rows}


def load(result: dict[str, Any]):
    """The exported files as a datasets.DatasetDict (the round trip the tests check)."""
    from datasets import load_dataset

    builder = "json" if result["type"] == "jsonl" else "parquet"
    return load_dataset(builder, data_files=result["files"])
