"""Adding and removing course files from the UI: safe names, size and type limits, no silent overwrite.

Kept apart from app.py so the rules are plain functions that tests call with real files.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path

from rag.errors import RagError
from rag.ingest.loaders import UnreadableFile, read_file

ALLOWED_EXTENSIONS = (".md", ".txt", ".pdf")
MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
MAX_NAME_CHARS = 120
_UNSAFE_CHARS = re.compile(r"[^\w .()+-]", re.UNICODE)


@dataclass
class Saved:
    """One uploaded file after saving: its name in the corpus and what happened ('added', 'replaced', 'unchanged')."""

    name: str
    path: Path
    status: str


def safe_filename(name: str) -> str:
    """A plain file name for `name`: directories stripped, odd characters replaced; refuses hidden,
    '..' and unsupported names (RagError with a message for the user)."""
    base = unicodedata.normalize("NFC", str(name)).replace("\\", "/").split("/")[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if not base:
        raise RagError(f"{name!r} has no usable file name")
    if base.startswith(".") or ".." in base:
        raise RagError(f"{base!r} is not allowed: use a plain name without leading dots or '..'")
    stem, ext = os.path.splitext(base)
    ext = ext.lower()
    if ext not in ALLOWED_EXTENSIONS:
        raise RagError(f"{base!r}: only {', '.join(ALLOWED_EXTENSIONS)} files can be added")
    stem = _UNSAFE_CHARS.sub("_", stem).strip(" .") or "document"
    return stem[: MAX_NAME_CHARS - len(ext)] + ext


def save_upload(corpus_dir: Path, name: str, data: bytes, *, replace: bool = False) -> Saved:
    """Check an uploaded file (name, size, readable text) and write it into `corpus_dir`.

    A different file with the same name is only replaced when `replace` is set; the same bytes are a no-op.
    """
    safe = safe_filename(name)
    if len(data) > MAX_UPLOAD_BYTES:
        raise RagError(f"{safe} is {len(data) / 1_048_576:.1f} MB; the limit is {MAX_UPLOAD_MB} MB")
    try:
        read_file(Path(safe), safe, data)  # refuse files the index would skip, before they reach the corpus
    except UnreadableFile as exc:
        raise RagError(f"{safe} cannot be read: {exc}") from None
    corpus_dir = Path(corpus_dir)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    target = corpus_dir / safe
    if target.exists():
        if not target.is_file():
            raise RagError(f"{safe} exists in {corpus_dir} and is not a file; pick another name")
        if target.read_bytes() == data:
            return Saved(safe, target, "unchanged")
        if not replace:
            raise RagError(f"a different {safe} is already in the course: rename your file, "
                           "or tick 'Replace files with the same name'")
    # Hidden temp name: the indexer skips dot-files, so a half-written upload is never indexed.
    tmp = corpus_dir / f".upload-{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    try:
        if replace:
            status = "replaced" if target.exists() else "added"
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails instead of overwriting if the name appeared meanwhile
            except FileExistsError:
                raise RagError(f"{safe} appeared in the course folder meanwhile; try again") from None
            status = "added"
    finally:
        tmp.unlink(missing_ok=True)
    return Saved(safe, target, status)


def remove_document(corpus_dir: Path, source: str) -> Path:
    """Delete the corpus file indexed as `source` (a path relative to `corpus_dir`); refuses paths outside it."""
    root = Path(corpus_dir).resolve()
    path = (root / source).resolve()
    if not path.is_relative_to(root) or path == root:
        raise RagError(f"{source!r} is not inside the course folder {root}")
    if path.exists() and not path.is_file():
        raise RagError(f"{source} is not a file; remove it from {root} by hand")
    path.unlink(missing_ok=True)  # already gone: re-indexing drops it all the same
    return path


def indexed_under(manifest: dict, corpus_dir: Path) -> bool:
    """Whether the index was built from `corpus_dir` (adding or removing files re-indexes that folder)."""
    root = manifest.get("corpus_root")
    return root is None or Path(root).resolve() == Path(corpus_dir).resolve()
