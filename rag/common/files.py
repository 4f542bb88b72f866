"""Shared file helpers: a file's identity (SHA-256), the reason of an OS error, whether a folder is usable.

Used by the configuration (rag.config), the corpus walk (rag.ingest), the index (rag.index) and the commands;
they live here, below all of them, so none imports another's domain for a helper.
"""

from __future__ import annotations

import errno
import hashlib
import stat
from pathlib import Path


def os_reason(exc: OSError) -> str:
    """A short, user-facing reason for an OS error (a symlink loop is named as such)."""
    if exc.errno == errno.ELOOP:
        return "symlink loop (a link that points back to itself or its own folder); fix or remove the link"
    return exc.strerror or str(exc)


def file_sha256(data: bytes) -> str:
    """Hex SHA-256 of `data` (a file's identity in the manifest)."""
    return hashlib.sha256(data).hexdigest()


def path_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at `path`, read in 1 MiB blocks (constant memory).

    :raises OSError: when the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be used as a folder to read or create, or None when it can.

    :param path: a folder that may not exist yet.
    :returns: e.g. "is a file, not a folder", "is a symlink loop …", or None (a folder, or nothing there).
    """
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return "is a broken symlink (its target does not exist)" if Path(path).is_symlink() else None
    except NotADirectoryError:
        return "is inside a file, not a folder (a parent of it is a file)"
    except OSError as exc:
        return "is a symlink loop" if exc.errno == errno.ELOOP else f"cannot be used: {os_reason(exc)}"
    if not stat.S_ISDIR(st.st_mode):
        return "is a file, not a folder"
    return None
