"""Export a RAFT dataset folder as training/eval files: hf | chat | completion | eval, JSONL or Parquet.

Splits are made by source chunk (seeded), so no oracle chunk is in two splits. Every file loads with
`datasets.load_dataset("json" | "parquet", data_files=...)`.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from raft.prompts import document_block
from raft.records import DATASET, DEFAULT_SPLIT, load_records
from raft.splits import SPLIT_NAMES, parse_split, split_by_chunk
from rag.common.atomic import fsync_dir, fsync_path, write_bytes_atomic
from rag.errors import RagError

FORMATS = ("hf", "chat", "completion", "eval")
TYPES = ("jsonl", "parquet")
DEFAULT_STOP = "<STOP>"
HF_COLUMNS = ("id", "type", "question", "context", "oracle_context", "cot_answer", "instruction",
              "oracle_present", "oracle_index", "distractor_ids", "final_answer", "quotes_verified",
              "source_chunk_id", "source", "generator_model", "seed")


def to_row(rec: dict, fmt: str, system_prompt: str | None = None, stop: str = DEFAULT_STOP) -> dict[str, Any]:
    """One exported row of `fmt` from a sample record.

    `hf` has the RAFT reference's columns in the reference's shape (gorilla raft/raft.py,
    `generate_question_cot_answer`): `context = {"title": [[t1, ..., tn]], "sentences": [[d1, ..., dn]]}`,
    each a list holding ONE list with the sample's documents in the order shown, so code written for the
    reference reads `row["context"]["sentences"][0]` as the documents; `instruction` is each document in
    `<DOCUMENT>...</DOCUMENT>` plus a newline, then the question; `oracle_context` the oracle's text;
    `cot_answer` the reasoning ending in one `<ANSWER>: final` line. Our extra columns follow. (dataset.jsonl
    itself keeps the flat `context` of ARCHITECTURE.md, which train and eval read.)

    :param rec: one dataset.jsonl record.
    :param fmt: one of `FORMATS`.
    :param system_prompt: `chat` only: a system message to put first.
    :param stop: `completion` only: appended to the completion.
    :returns: the row as a JSON-ready dict.
    :raises RagError: unknown `fmt`.
    """
    if fmt == "hf":
        row = {k: rec.get(k) for k in HF_COLUMNS}
        # the reference's nesting: one list of titles and one list of documents, each inside a list
        row["context"] = {"title": [list(rec["context"]["title"])], "sentences": [list(rec["context"]["sentences"])]}
        return row
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
    """One export file, written atomically (rag.common.atomic)."""
    if kind == "jsonl":
        write_bytes_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def export(dataset_dir: Path, fmt: str = "hf", kind: str = "jsonl", split: str = DEFAULT_SPLIT,
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
    records = load_records(source)  # a damaged line or a duplicate id: refused, naming the line
    if not records:
        raise RagError(f"{source} has no samples yet: nothing to export")
    out = Path(out_dir) if out_dir else Path(dataset_dir) / "export" / f"{fmt}-{kind}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RagError(f"cannot create the export folder {out}: {e.strerror or e}") from None
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
