"""Run folders: one writer at a time, an identity file, and fsynced JSONL logs that survive crashes and damage.

The one helper behind `rag index` (the index lock), `raft generate` (dataset/progress/rejected logs),
`raft train` (train_config.json, train_log.jsonl) and `raft eval` (run.json, results.jsonl). Atomic
whole-file writes live in rag.common.atomic.

JSONL policy, the same for every file of the project:
- a torn LAST line (no newline after it, and not a complete JSON object) is what a crash during an append
  leaves: readers drop it silently, writers cut it off before appending again;
- any other bad line (not UTF-8, not JSON, not an object, or refused by the file's validator) is damage,
  never a reason to drop the lines after it: readers of finished data (export, eval, train) refuse the file
  with one line, "FILE line N: not a JSON object (...)"; a resuming writer keeps every valid line, moves
  the damaged ones to FILE.damaged (appended, raw bytes, to repair and put back) and says so.
Blank lines carry nothing and are skipped.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from rag.common.atomic import fsync_dir, write_bytes_atomic, write_json_atomic
from rag.errors import RagError

LOCK = ".lock"
DAMAGED_SUFFIX = ".damaged"
Validator = Callable[[dict], None]  # raises ValueError("what is wrong") for a row it refuses

# ------------------------------------------------------------------------------------------------ lock

_held: dict[str, weakref.ref] = {}  # lock file -> the FolderLock of this process holding it (takeover only)
_held_guard = threading.Lock()


def _os_problem(folder: Path, e: OSError, hint: str) -> RagError:
    reason = (e.strerror or type(e).__name__).lower()
    return RagError(f"cannot write {folder}: {reason} — {hint}")


class FolderLock:
    """An exclusive, non-blocking fcntl lock on FOLDER/.lock: one writer per folder, across processes.

    Use as a context manager, or call release(). A process that dies releases it. With takeover=True a
    lock still held by an abandoned object of this same process (a run that raised) is taken over first.
    """

    def __init__(self, folder: Path, busy: str, *, hint: str = "fix its permissions or use another folder",
                 what: str = "folder", takeover: bool = False) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except PermissionError as e:
            raise _os_problem(self.folder, e, hint) from None
        except OSError as e:
            raise RagError(f"cannot create the {what} {self.folder}: {e.strerror or e}") from None
        path = self.folder / LOCK
        self._key = str(path.resolve())
        self._fh: Any = None
        if takeover:
            with _held_guard:
                ref = _held.get(self._key)
            old = ref() if ref is not None else None
            if old is not None:
                old.release()
        try:
            fh = open(path, "a")
        except OSError as e:
            raise _os_problem(self.folder, e, hint) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RagError(busy) from None
        except OSError as e:
            fh.close()
            raise _os_problem(self.folder, e, hint) from None
        if not os.access(self.folder, os.W_OK):  # a lock file left writable in a read-only folder
            fh.close()
            raise _os_problem(self.folder, PermissionError(13, "Permission denied"), hint)
        self._fh = fh
        with _held_guard:
            _held[self._key] = weakref.ref(self)

    @property
    def held(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        """Unlock (idempotent)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        with _held_guard:
            ref = _held.get(self._key)
            if ref is not None and (ref() is self or ref() is None):
                del _held[self._key]
        fh.close()  # closing the file drops the flock

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


# -------------------------------------------------------------------------------------------- identity


def differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """'key: OLD before, NEW now' for every key (of either) whose value differs, except `ignore`."""
    skip = set(ignore)
    keys = sorted((set(old) | set(new)) - skip)
    return [f"{k}: {old.get(k)!r} before, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


def read_identity(path: Path, folder: Path, option: str) -> dict[str, Any] | None:
    """The JSON object in `path` (None when absent); RagError when it is damaged."""
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        old = None
    except OSError as e:
        raise RagError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(old, dict):
        raise RagError(f"{path} is damaged: delete the folder {folder} or use another {option}")
    return old


def check_identity(folder: Path, name: str, identity: Mapping[str, Any], *, what: str = "a run",
                   option: str = "--out", leftovers: Iterable[str] = (), ignore: Iterable[str] = (),
                   write: bool = True) -> dict[str, Any] | None:
    """Compare FOLDER/NAME (the arguments that decided the folder's content) with `identity`.

    Same arguments: return the stored dict. Other arguments: RagError listing every difference. No file
    yet: refuse a folder that already holds any of `leftovers` (made by something else), else write
    `identity` (unless write=False) and return None.
    """
    folder = Path(folder)
    path = folder / name
    old = read_identity(path, folder, option)
    if old is not None:
        diffs = differences(old, identity, ignore)
        if diffs:
            raise RagError(f"{folder} holds {what} made with other arguments ({'; '.join(diffs)}): "
                           f"use the same arguments to resume, or another {option}")
        return old
    found = next((n for n in leftovers if (folder / n).exists()), None)
    if found is not None:
        raise RagError(f"{folder} has {found} but no {name}: use an empty folder for {option}")
    if write:
        write_json_atomic(path, dict(identity))
    return None


# ----------------------------------------------------------------------------------------------- JSONL

_JSON_KIND = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false",
              type(None): "null"}


@dataclass
class BadLine:
    """A damaged line: its 1-based number, its raw bytes and what is wrong with it."""

    number: int
    raw: bytes
    reason: str


@dataclass
class JsonlScan:
    """Every line of a JSONL file, sorted into valid rows, damaged lines and a torn last line."""

    path: Path
    rows: list[dict] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # line number of each row
    raws: list[bytes] = field(default_factory=list)  # raw bytes of each row (kept byte for byte on repair)
    damaged: list[BadLine] = field(default_factory=list)
    torn: bytes | None = None  # the unfinished last line a crash left (dropped)

    def problem(self, bad: BadLine | None = None) -> str:
        """'FILE line N: reason' (+ how many more), for the first damaged line or `bad`."""
        bad = bad or self.damaged[0]
        more = len(self.damaged) - 1
        return f"{self.path} line {bad.number}: {bad.reason}" + (
            f" (and {more} more damaged line{'s' if more > 1 else ''})" if more > 0 else "")

    def refuse_damage(self, hint: str = "repair or delete that line") -> None:
        """RagError naming the first damaged line, if any (readers of finished data)."""
        if self.damaged:
            raise RagError(f"{self.problem()}: {hint}")


def _parse(raw: bytes, validate: Validator | None) -> tuple[dict | None, str, bool]:
    """(row, "", False), or (None, reason, incomplete): incomplete = cut short (not UTF-8 or not JSON)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not a JSON object (not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1})", True
    try:
        row = json.loads(text)
    except ValueError as e:
        detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        return None, f"not a JSON object ({detail})", True
    if not isinstance(row, dict):
        return None, f"not a JSON object ({_JSON_KIND.get(type(row), type(row).__name__)})", False
    if validate is not None:
        try:
            validate(row)
        except ValueError as e:
            return None, str(e), False
    return row, "", False


def scan_jsonl(path: Path, validate: Validator | None = None) -> JsonlScan:
    """Read `path` (absent = empty) without dropping anything silently except a torn last line."""
    path = Path(path)
    scan = JsonlScan(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return scan
    except OSError as e:
        raise RagError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    last = len(lines) - 1  # lines[last] is what follows the final newline: b"" in a complete file
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        row, reason, incomplete = _parse(raw, validate)
        if row is not None:
            scan.rows.append(row)
            scan.numbers.append(i + 1)
            scan.raws.append(raw)
        elif i == last and incomplete:
            scan.torn = raw  # no newline after it and cut short: a crash during an append
        else:
            scan.damaged.append(BadLine(i + 1, raw, reason))
    return scan


def read_jsonl(path: Path, validate: Validator | None = None, hint: str = "repair or delete that line") -> list[dict]:
    """The rows of a finished JSONL file: a torn last line is dropped, any other bad line is a RagError."""
    scan = scan_jsonl(path, validate)
    scan.refuse_damage(hint)
    return scan.rows


@dataclass
class Repair:
    """What repair_jsonl did to one file."""

    path: Path
    rows: list[dict]
    dropped: int = 0  # valid rows the caller's `keep` refused (e.g. an unfinished chunk's samples)
    damaged: list[BadLine] = field(default_factory=list)
    torn: bool = False
    side: Path | None = None  # where the damaged lines went

    def note(self) -> str | None:
        """A one-line report of moved damaged lines (None when there were none)."""
        if not self.damaged:
            return None
        n, first, k = len(self.damaged), self.damaged[0], len(self.rows)
        kept = f"kept the {k} valid line{'s' if k != 1 else ''}"
        if n == 1:
            return f"{self.path}: moved damaged line {first.number} ({first.reason}) to {self.side}; {kept}"
        where = ", ".join(str(b.number) for b in self.damaged[:5]) + (", ..." if n > 5 else "")
        return (f"{self.path}: moved {n} damaged lines ({where}; line {first.number}: {first.reason}) to "
                f"{self.side}; {kept}")


def repair_jsonl(path: Path, keep: Callable[[dict], bool] | None = None,
                 validate: Validator | None = None) -> Repair:
    """Make `path` a clean log to append to, losing no valid row.

    A torn last line is cut; rows `keep` refuses are dropped (counted); damaged lines are appended to
    PATH.damaged (fsynced) before PATH is rewritten (atomically) with the remaining rows, byte for byte.
    """
    path = Path(path)
    scan = scan_jsonl(path, validate)
    kept_rows, kept_raw, dropped = [], [], 0
    for row, raw in zip(scan.rows, scan.raws):
        if keep is None or keep(row):
            kept_rows.append(row)
            kept_raw.append(raw.rstrip(b"\r"))
        else:
            dropped += 1
    result = Repair(path, kept_rows, dropped, scan.damaged, scan.torn is not None)
    if not path.exists():
        return result
    if scan.damaged:
        result.side = path.with_name(path.name + DAMAGED_SUFFIX)
        _append_bytes(result.side, b"".join(b.raw + b"\n" for b in scan.damaged))
    clean = b"".join(r + b"\n" for r in kept_raw)
    if path.read_bytes() != clean:
        write_bytes_atomic(path, clean)
    return result


def _append_bytes(path: Path, data: bytes) -> None:
    if not data:
        return
    new = not path.exists()
    with open(path, "a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":  # never glue a row onto an unfinished line
                data = b"\n" + data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if new:
        fsync_dir(path.parent)


def append_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append one JSON line per row, flushed and fsynced (the file's folder too when the file is new)."""
    _append_bytes(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


__all__ = ["LOCK", "DAMAGED_SUFFIX", "FolderLock", "differences", "read_identity",
           "check_identity", "BadLine", "JsonlScan", "scan_jsonl", "read_jsonl", "Repair", "repair_jsonl",
           "append_jsonl"]
