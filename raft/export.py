"""Export a RAFT dataset folder as training/eval files: hf | chat | completion | eval, JSONL or Parquet.

Splits are made by source chunk (seeded), so no oracle chunk is in two splits. Every file loads with
`datasets.load_dataset("json" | "parquet", data_files=...)`.

The export never deletes or overwrites a file it did not write. Each export records the files it
wrote, with their SHA-256, in `MANIFEST` inside the output folder. A split file of an earlier export with
other fractions ("stale split") is removed only when the manifest lists it with the same content; a file of
the user's (not listed, or edited since) is left alone, and where the export must write it is a one-line
error naming it. The default folder DATASET_DIR/export/FORMAT-TYPE is the export's own: split files found
there without a manifest (from an export older than the manifest) count as its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from raft.prompts import document_block
from raft.records import DATASET, DEFAULT_SPLIT, load_records
from raft.splits import SPLIT_NAMES, parse_split, split_by_chunk
from rag.common.atomic import fsync_dir, fsync_path, write_bytes_atomic, write_json_atomic
from rag.errors import RagError

FORMATS = ("hf", "chat", "completion", "eval")
TYPES = ("jsonl", "parquet")
MANIFEST = ".raft-export.json"  # in the output folder: the files the export wrote, name -> SHA-256
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(out: Path) -> dict[str, str] | None:
    """The files an earlier export wrote into `out` (name -> SHA-256), or None when there is no manifest.

    A manifest that cannot be read is treated as an empty one: then no file counts as the export's own.
    """
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(files, dict) else {}


def _owned(out: Path, manifest: dict[str, str] | None, legacy: bool) -> set[str]:
    """Names of the split files in `out` the export wrote and nobody changed since (only those may go)."""
    names = {f"{name}.{kind}" for name in SPLIT_NAMES for kind in TYPES}
    present = {n for n in names if (out / n).is_file() and not (out / n).is_symlink()}
    if manifest is None:
        return present if legacy else set()
    return {n for n in present if n in manifest and _sha256(out / n) == manifest[n]}


def export(dataset_dir: Path, fmt: str = "hf", kind: str = "jsonl", split: str = DEFAULT_SPLIT,
           out_dir: Path | None = None, system_prompt: str | None = None, stop: str = DEFAULT_STOP,
           seed: int = 0) -> dict[str, Any]:
    """Write one file per non-empty split and remove the stale split files of an earlier export.

    :param dataset_dir: a `raft generate` output folder (its dataset.jsonl is read).
    :param fmt: one of `FORMATS`.
    :param kind: one of `TYPES`.
    :param split: train,validation,test fractions.
    :param out_dir: the output folder (default DATASET_DIR/export/FORMAT-TYPE).
    :param system_prompt: `chat` only: a system message first.
    :param stop: `completion` only: appended to every completion.
    :param seed: seed of the split.
    :returns: {"format", "type", "dir", "files": {split: path}, "rows": {split: n}}.
    :raises RagError: a bad argument, no or a damaged dataset, an output folder that cannot be created, or a
        file of the user's where a split file must be written (nothing is written or removed then).
    """
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
    splits = {name: recs for name, recs in split_by_chunk(records, fractions, seed).items() if recs}
    manifest = _read_manifest(out)
    owned = _owned(out, manifest, legacy=out_dir is None)
    for name in splits:  # checked before anything is written or removed
        target = out / f"{name}.{kind}"
        if os.path.lexists(target) and target.name not in owned:
            raise RagError(f"{target} is in the way: raft export did not write it (or it was changed since), so "
                           "it is left alone; move it away or choose another --out")
    files, rows = {}, {}
    written = {n: h for n, h in (manifest or {}).items() if n in owned}
    for name, recs in splits.items():
        path = out / f"{name}.{kind}"
        _write([to_row(r, fmt, system_prompt, stop) for r in recs], path, kind)
        files[name], rows[name] = str(path), len(recs)
        written[path.name] = _sha256(path)
    for name in SPLIT_NAMES:  # no stale split from an earlier export with other fractions: only its own files
        stale = f"{name}.{kind}"
        if name not in splits and stale in owned:
            (out / stale).unlink(missing_ok=True)
            written.pop(stale, None)
    if manifest is None:  # legacy files of the default folder: recorded, so later exports know them
        written.update({n: _sha256(out / n) for n in owned if (out / n).is_file() and n not in written})
    write_json_atomic(out / MANIFEST, {"written_by": "raft export", "files": dict(sorted(written.items()))})
    return {"format": fmt, "type": kind, "dir": str(out), "files": files, "rows": rows}


def load(result: dict[str, Any]):
    """The exported files as a datasets.DatasetDict (the round trip the tests check)."""
    from datasets import load_dataset

    builder = "json" if result["type"] == "jsonl" else "parquet"
    return load_dataset(builder, data_files=result["files"])
