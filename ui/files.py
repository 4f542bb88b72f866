"""Adding and removing course files from the UI: safe names, size and type limits, no silent overwrite.

Kept apart from app.py so the rules are plain functions that tests call with real files. What belongs to
the course is decided by the indexer's rule (rag.ingest.paths.outside_course): an upload never
reads a file through a link that leads out of the course folder, and a removal deletes the entry in the
course folder (a link, not the file it names) and never deletes through a link out of it.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path

from rag.common.files import os_reason
from rag.errors import RagError, UnreadableFile
from rag.ingest.loaders import read_file
from rag.ingest.paths import SUPPORTED, outside_course

ALLOWED_EXTENSIONS = tuple(sorted(SUPPORTED))  # what the indexer reads, no more and no less
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
    A link of that name that leads out of the course is never read (it counts as a different file), and
    replacing it replaces the link, not the file it names.

    :param corpus_dir: the course folder (created when missing).
    :param name: the uploaded file's name (only its last part is kept, see `safe_filename`).
    :param data: its bytes.
    :param replace: replace a different file of the same name.
    :returns: the name, path and what happened.
    :raises RagError: a bad name, too large, unreadable (the loader's reason: any loader error is one), a
        different file of that name without `replace`, or a folder of that name.
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
    leads_out = outside_course(target, corpus_dir.resolve()) is not None
    if target.exists():
        if not target.is_file() and not leads_out:
            raise RagError(f"{safe} exists in {corpus_dir} and is not a file; pick another name")
        if not leads_out and target.read_bytes() == data:
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
    """Delete the entry of the course folder indexed as `source`: a file, or a link (never the file it names).

    The folder that holds it must be part of the course by the indexer's rule (`outside_course`, with no
    opt-in: the app never deletes outside the course folder, even where `follow_outside_links` reads).

    :param corpus_dir: the course folder.
    :param source: the indexed name, a path relative to `corpus_dir`.
    :returns: the path removed (or already gone: re-indexing drops it all the same).
    :raises RagError: `source` climbs out of the folder (`..`, absolute), lies in a folder that leads out of
        the course, is a folder, or cannot be deleted (the system's reason).
    """
    root = Path(corpus_dir).resolve()
    parts = Path(source).parts
    if not parts or Path(source).is_absolute() or ".." in parts:
        raise RagError(f"{source!r} is not inside the course folder {root}")
    path = root / source
    folder = outside_course(path.parent, root)
    if folder is not None:
        raise RagError(f"{source} lies outside the course folder {root} (in {folder}, through a link); "
                       "the app does not delete there: remove the link or the file by hand")
    if path.is_dir():
        raise RagError(f"{source} is not a file; remove it from {root} by hand")
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise RagError(f"cannot remove {source} from {root}: {os_reason(exc)}") from None
    return path


def indexed_under(manifest: dict, corpus_dir: Path) -> bool:
    """Whether the index was built from `corpus_dir` (adding or removing files re-indexes that folder)."""
    root = manifest.get("corpus_root")
    return root is None or Path(root).resolve() == Path(corpus_dir).resolve()
