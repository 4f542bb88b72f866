"""`raft export` never deletes or overwrites a file it did not write (issue 31): the "no stale split" cleanup
removes only the files an earlier export recorded in the folder's manifest (`.raft-export.json`), with
the content it wrote; a user's own file where an export wants to write is a one-line error naming it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from raft.cli import cli
from raft.export import MANIFEST
from raft.records import DATASET
from tests.raft.test_records import good


def _dataset(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [good(i, id=f"raft-{i}", source_chunk_id=i) for i in range(1, n + 1)]
    (folder / DATASET).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def _export(*args: str):
    return CliRunner().invoke(cli, ["export", *args])


def test_split_1_keeps_the_users_own_test_and_validation_files(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "raft")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "test.jsonl").write_text("my own test set\n", encoding="utf-8")
    (out / "validation.jsonl").write_text("my own validation set\n", encoding="utf-8")
    r = _export(str(data), "--out", str(out), "--split", "1")
    assert r.exit_code == 0, r.output
    assert (out / "test.jsonl").read_text(encoding="utf-8") == "my own test set\n"
    assert (out / "validation.jsonl").read_text(encoding="utf-8") == "my own validation set\n"
    assert len((out / "train.jsonl").read_text(encoding="utf-8").splitlines()) == 6
    assert json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"].keys() == {"train.jsonl"}


def test_a_users_file_where_the_export_writes_is_a_one_line_error(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "raft")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.jsonl").write_text("my notes\n", encoding="utf-8")
    r = _export(str(data), "--out", str(out), "--split", "1")
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert f"{out / 'train.jsonl'}" in r.output and "raft export did not write" in r.output
    assert "another --out" in r.output
    assert (out / "train.jsonl").read_text(encoding="utf-8") == "my notes\n"
    assert not (out / MANIFEST).exists()


def test_stale_splits_of_an_earlier_export_are_removed_but_an_edited_one_is_kept(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "raft", n=10)
    out = tmp_path / "export"
    r = _export(str(data), "--out", str(out), "--split", "0.6,0.2,0.2")
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.glob("*.jsonl")} == {"train.jsonl", "validation.jsonl", "test.jsonl"}
    # a re-export with other fractions: its own old files go (no stale split) ...
    r = _export(str(data), "--out", str(out), "--split", "1")
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.glob("*.jsonl")} == {"train.jsonl"}
    # ... but a split file the user edited since is theirs now: never deleted, and refused as a target
    r = _export(str(data), "--out", str(out), "--split", "0.6,0.2,0.2")
    assert r.exit_code == 0, r.output
    (out / "test.jsonl").write_text("edited by hand\n", encoding="utf-8")
    r = _export(str(data), "--out", str(out), "--split", "1")
    assert r.exit_code == 0, r.output
    assert (out / "test.jsonl").read_text(encoding="utf-8") == "edited by hand\n"
    assert not (out / "validation.jsonl").exists()
    r = _export(str(data), "--out", str(out), "--split", "0.6,0.2,0.2")
    assert r.exit_code == 1 and f"{out / 'test.jsonl'}" in r.output
    # re-exporting the same way twice just rewrites its own files
    r = _export(str(data), "--out", str(out), "--split", "1")
    assert r.exit_code == 0, r.output


def test_parquet_and_jsonl_exports_share_a_folder(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "raft", n=10)
    out = tmp_path / "export"
    assert _export(str(data), "--out", str(out), "--split", "0.6,0.2,0.2").exit_code == 0
    r = _export(str(data), "--out", str(out), "--split", "1", "--type", "parquet")
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {MANIFEST, "train.jsonl", "validation.jsonl", "test.jsonl",
                                               "train.parquet"}
    r = _export(str(data), "--out", str(out), "--split", "1")
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {MANIFEST, "train.jsonl", "train.parquet"}
