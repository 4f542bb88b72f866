"""Crash-safe file writes: write a temp file beside the target, fsync, rename over it, fsync the folder."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a rename or new file inside `path` durable."""
    fsync_path(path)


def fsync_path(path: Path) -> None:
    """Flush a file's content (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new content, never a torn file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """write_bytes_atomic of `text` as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    """write_text_atomic of `obj` as indented JSON."""
    write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
