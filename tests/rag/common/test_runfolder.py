"""rag.common.runfolder: the lock, the identity file, fsynced appends, and torn vs damaged JSONL lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.common import runfolder
from rag.common.runfolder import (
    FolderLock,
    append_jsonl,
    check_identity,
    differences,
    read_jsonl,
    repair_jsonl,
    scan_jsonl,
)
from rag.errors import RagError

from tests.conftest import ROOT

BUSY = "another `job` is writing the folder"


# ------------------------------------------------------------------------------------------------ lock


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "nested"
    with FolderLock(folder, BUSY) as lock:
        assert folder.is_dir() and (folder / ".lock").exists() and lock.held
        with pytest.raises(RagError, match="another `job` is writing"):
            FolderLock(folder, BUSY)
    assert not lock.held
    with FolderLock(folder, BUSY):  # free again
        pass


def test_lock_held_by_another_process_is_refused(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from rag.common.runfolder import FolderLock; "
            f"lock = FolderLock(Path({str(tmp_path)!r}), 'busy'); print('locked', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RagError, match=BUSY):
            FolderLock(tmp_path, BUSY)
    finally:
        child.kill()
        child.wait()
    with FolderLock(tmp_path, BUSY):  # a dead process holds nothing
        pass


def test_takeover_frees_a_lock_abandoned_in_this_process(tmp_path: Path) -> None:
    abandoned = FolderLock(tmp_path, BUSY, takeover=True)  # e.g. a run that raised and is still referenced
    with pytest.raises(RagError, match=BUSY):
        FolderLock(tmp_path, BUSY)  # without takeover: refused
    again = FolderLock(tmp_path, BUSY, takeover=True)
    assert again.held and not abandoned.held
    again.release()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; the simulated test below covers it")
def test_unwritable_folder_is_a_one_line_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(RagError, match=r"cannot write .*ro: permission denied — fix"):
            FolderLock(folder, BUSY)
        with pytest.raises(RagError, match=r"cannot write .*sub: permission denied"):
            FolderLock(folder / "sub", BUSY)
    finally:
        folder.chmod(0o755)


def test_permission_error_on_the_lock_file_is_a_one_line_error(tmp_path: Path, monkeypatch) -> None:
    """What a folder without write permission does to open(.lock) (simulated: root may write anywhere)."""
    def denied(path, *a, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runfolder, "open", denied, raising=False)
    with pytest.raises(RagError) as info:
        FolderLock(tmp_path, BUSY, hint="choose another --index-dir")
    assert str(info.value) == f"cannot write {tmp_path}: permission denied — choose another --index-dir"

    monkeypatch.undo()
    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(RagError, match=r"cannot write .*new: permission denied"):
        FolderLock(tmp_path / "new", BUSY)


# -------------------------------------------------------------------------------------------- identity


def test_identity_written_then_checked(tmp_path: Path) -> None:
    ident = {"seed": 1, "p": 0.8}
    assert check_identity(tmp_path, "run.json", ident) is None
    assert json.loads((tmp_path / "run.json").read_text()) == ident
    assert check_identity(tmp_path, "run.json", dict(ident)) == ident
    with pytest.raises(RagError) as info:
        check_identity(tmp_path, "run.json", {"seed": 2, "p": 0.8, "k": 3}, what="a run", option="--out")
    msg = str(info.value)
    assert "holds a run made with other arguments" in msg and "seed: 1 before, 2 now" in msg
    assert "k: None before, 3 now" in msg and msg.endswith("or another --out") and "\n" not in msg
    # ignored keys are not compared
    assert check_identity(tmp_path, "run.json", {"seed": 1, "p": 0.8, "models": {}}, ignore=("models",)) == ident


def test_identity_refuses_leftovers_and_damage(tmp_path: Path) -> None:
    (tmp_path / "dataset.jsonl").write_text("{}\n")
    with pytest.raises(RagError, match="has dataset.jsonl but no run.json: use an empty folder for --out"):
        check_identity(tmp_path, "run.json", {"a": 1}, leftovers=("dataset.jsonl",))
    (tmp_path / "run.json").write_text("[1, 2")
    with pytest.raises(RagError, match=r"run.json is damaged: delete the folder .* or use another --report"):
        check_identity(tmp_path, "run.json", {"a": 1}, option="--report")


def test_differences_is_public_and_symmetric() -> None:
    assert differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b: 2 before, 3 now", "c: None before, 4 now"]
    assert differences({"a": 1}, {"a": 1}) == []


# ----------------------------------------------------------------------------------------------- JSONL


def test_append_is_line_per_row_and_never_glues_onto_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"a": 1}, {"b": "é"}])
    append_jsonl(path, [])
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    with open(path, "a") as f:
        f.write('{"c": ')  # a crash mid-append
    append_jsonl(path, [{"d": 4}])  # (writers repair first; if one did not, the row still gets its own line)
    scan = scan_jsonl(path)
    assert scan.rows == [{"a": 1}, {"b": "é"}, {"d": 4}] and [b.number for b in scan.damaged] == [3]


def test_torn_last_line_is_dropped_silently(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b": "unfin')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    scan = scan_jsonl(path)
    assert scan.torn is not None and not scan.damaged
    path.write_bytes(b'{"a": 1}\n{"a": 2}')  # complete, only the newline missing: kept
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xc3')  # cut inside a UTF-8 character: torn too
    assert read_jsonl(path) == [{"a": 1}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("bad,reason", [
    (b'{"a": 2, "b": ', "not a JSON object (Expecting value at column 15)"),
    (b"[1, 2]", "not a JSON object (an array)"),
    (b"null", "not a JSON object (null)"),
    (b'{"a": "\xff"}', "not a JSON object (not UTF-8: byte 0xff at column 8)"),
])
def test_damaged_middle_line_is_refused_by_readers(tmp_path: Path, bad: bytes, reason: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\n\n' + bad + b'\n{"a": 3}\n{"a": 4}\n')
    with pytest.raises(RagError) as info:
        read_jsonl(path)
    assert str(info.value) == f"{path} line 3: {reason}: repair or delete that line"
    scan = scan_jsonl(path)
    assert scan.rows == [{"a": 1}, {"a": 3}, {"a": 4}] and scan.numbers == [1, 4, 5]


def test_damaged_last_line_with_its_newline_is_damage_not_a_tear(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n')
    with pytest.raises(RagError, match="line 2: not a JSON object"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n[3]')  # complete JSON, but not an object: damage even without a newline
    with pytest.raises(RagError, match=r"line 2: not a JSON object \(an array\)"):
        read_jsonl(path)


def test_validator_refusals_are_damage(tmp_path: Path) -> None:
    def need_id(row: dict) -> None:
        if not isinstance(row.get("id"), int):
            raise ValueError(f"field id must be an integer, got {row.get('id')!r}")

    path = tmp_path / "data.jsonl"
    path.write_text('{"id": 1}\n{"id": [2]}\n{"id": 3}\n')
    with pytest.raises(RagError, match=r"line 2: field id must be an integer, got \[2\]"):
        read_jsonl(path, need_id)


def test_repair_keeps_every_valid_line_and_moves_damage_aside(tmp_path: Path) -> None:
    path = tmp_path / "dataset.jsonl"
    lines = [b'{"i": 1}', b'{"i": 2}', b"garbage \xff", b'{"i": 4}', b'{"i": 5, "unfinished": true}', b'{"i": 6}']
    path.write_bytes(b"\n".join(lines) + b'\n{"i": 7')  # + a torn last line
    result = repair_jsonl(path, keep=lambda r: not r.get("unfinished"))
    assert [r["i"] for r in result.rows] == [1, 2, 4, 6]
    assert result.dropped == 1 and result.torn and [b.number for b in result.damaged] == [3]
    assert path.read_bytes() == b'{"i": 1}\n{"i": 2}\n{"i": 4}\n{"i": 6}\n'  # byte for byte, in order
    side = tmp_path / "dataset.jsonl.damaged"
    assert result.side == side and side.read_bytes() == b"garbage \xff\n"
    note = result.note()
    assert note == (f"{path}: moved damaged line 3 (not a JSON object (not UTF-8: byte 0xff at column 9)) to "
                    f"{side}; kept the 4 valid lines")
    # a second repair finds nothing to do, and appends continue cleanly
    again = repair_jsonl(path)
    assert not again.damaged and again.note() is None and side.read_bytes() == b"garbage \xff\n"
    append_jsonl(path, [{"i": 8}])
    assert [r["i"] for r in read_jsonl(path)] == [1, 2, 4, 6, 8]


def test_repair_of_a_clean_file_does_not_rewrite_it(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n')
    before = path.stat().st_mtime_ns, path.stat().st_ino
    repair_jsonl(path)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    assert not (tmp_path / "log.jsonl.damaged").exists()
    assert repair_jsonl(tmp_path / "absent.jsonl").rows == []


# ------------------------------------------------------------------------------------------ the index


def test_index_lock_is_the_run_folder_lock(tmp_path: Path) -> None:
    from rag.index.build import build_lock

    with build_lock(tmp_path / "index"):
        with pytest.raises(RagError, match="another `rag index` is writing .*index; wait for it to finish"):
            build_lock(tmp_path / "index")
        with pytest.raises(RagError, match=BUSY):  # the same .lock as every run folder
            FolderLock(tmp_path / "index", BUSY)
    with build_lock(tmp_path / "index"):
        pass


def test_rag_index_into_a_folder_without_write_permission_is_one_line(small_corpus: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """Issue 11: a PermissionError on the index lock was a traceback (simulated: root may write anywhere)."""
    from click.testing import CliRunner

    from rag.cli import cli

    def denied(path, *a, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runfolder, "open", denied, raising=False)
    index = tmp_path / "index"
    r = CliRunner().invoke(cli, ["index", str(small_corpus), "--index-dir", str(index)])
    assert r.exit_code == 1
    assert r.output == f"Error: cannot write {index}: permission denied — fix its permissions or choose another " \
                       "--index-dir\n"
