"""Load course files (.md .txt .pdf .html) into Documents; unreadable files are reported, not fatal."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

SUPPORTED = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".pdf": "pdf", ".html": "html", ".htm": "html"}
MAX_FILE_BYTES = 50 * 1024 * 1024
LOADER_VERSION = 2  # bump when extracted text changes: indexes re-read every file on their next update


@dataclass
class Document:
    """The text of one file, as markdown-ish plain text, with where it came from."""

    text: str
    source: str  # path relative to the corpus root, with forward slashes
    sha256: str
    metadata: dict = field(default_factory=dict)


@dataclass
class Skipped:
    """A file that could not be loaded, and why (one line a user can act on)."""

    source: str
    reason: str


class UnreadableFile(Exception):
    """Raised by a reader when a file has no usable text."""


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _decode_text(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise UnreadableFile("binary file (contains NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8") from None
    # Control characters other than whitespace mean this is not a text document.
    bad = sum(1 for ch in text[:8192] if ord(ch) < 32 and ch not in "\n\r\t\f")
    if bad > 8:
        raise UnreadableFile("binary content in a text file")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_pdf(data: bytes) -> tuple[str, dict]:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadableFile("encrypted PDF; save an unencrypted copy")
        pages, starts, pos = [], [], 0
        for page in reader.pages:
            txt = (page.extract_text() or "").strip()
            starts.append(pos)
            pages.append(txt)
            pos += len(txt) + 2
    except UnreadableFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise UnreadableFile(f"broken PDF ({type(exc).__name__}: {str(exc)[:80]})") from None
    return "\n\n".join(pages), {"page_starts": starts}


_BLOCK_TAGS = ["p", "li", "pre", "blockquote", "tr", "dt", "dd", "figcaption"]


def _read_html(text: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "footer", "header", "template"]):
        tag.decompose()
    lines: list[str] = []
    for el in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6", *_BLOCK_TAGS]):
        if el.find_parent(_BLOCK_TAGS) is not None:
            continue  # nested block: its text is emitted with its parent
        txt = el.get_text(" ", strip=True) if el.name != "pre" else el.get_text()
        if not txt.strip():
            continue
        if el.name[0] == "h" and el.name[1:].isdigit():
            lines.append("#" * int(el.name[1:]) + " " + txt)
        elif el.name == "li":
            lines.append("- " + txt)
        else:
            lines.append(txt)
    if not lines:  # a page with text outside the usual block tags
        lines = [soup.get_text("\n", strip=True)]
    return "\n\n".join(lines)


def read_file(path: Path, source: str, data: bytes | None = None) -> Document:
    """Read one supported file (or its already-read bytes); raises UnreadableFile with a user-facing reason."""
    kind = SUPPORTED.get(path.suffix.lower())
    if kind is None:
        raise UnreadableFile(f"unsupported file type {path.suffix or '(none)'}; use {', '.join(sorted(SUPPORTED))}")
    size = len(data) if data is not None else path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UnreadableFile(f"file too large ({size // 1_048_576} MiB > {MAX_FILE_BYTES // 1_048_576} MiB)")
    if data is None:
        data = path.read_bytes()
    digest = file_sha256(data)
    meta: dict = {"kind": kind}
    if kind == "pdf":
        text, extra = _read_pdf(data)
        meta.update(extra)
    elif kind == "html":
        text = _read_html(_decode_text(data))
    else:
        text = _decode_text(data)
        if kind == "markdown":
            text = strip_md_images(text)
    if not text.strip():
        raise UnreadableFile("empty file (no text)" if kind != "pdf" else "PDF has no extractable text (scanned images?)")
    return Document(text=text, source=source, sha256=digest, metadata=meta)


def iter_files(root: Path) -> Iterable[Path]:
    """Supported files under `root` (or `root` itself), sorted, hidden files and folders skipped."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in SUPPORTED:
            yield path


def source_name(path: Path, root: Path) -> str:
    """The stable name a file is indexed under: its path relative to the corpus root."""
    if root.is_file():
        return path.name
    return path.relative_to(root).as_posix()


def load_documents(root: Path) -> tuple[list[Document], list[Skipped]]:
    """Load every supported file under `root`; files that fail are returned as Skipped."""
    if not root.exists():
        raise FileNotFoundError(root)
    docs: list[Document] = []
    skipped: list[Skipped] = []
    for path in iter_files(root):
        src = source_name(path, root)
        try:
            docs.append(read_file(path, src))
        except UnreadableFile as exc:
            skipped.append(Skipped(src, str(exc)))
        except OSError as exc:
            skipped.append(Skipped(src, f"cannot read: {exc.strerror or exc}"))
    return docs, skipped


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")


def strip_md_images(text: str) -> str:
    """Replace markdown images by their alt text: image links carry no words worth embedding or quoting."""
    return _MD_IMAGE.sub(lambda m: m.group(1).strip(), text)


_WS = re.compile(r"\s+")


def normalize_ws(text: str) -> str:
    """Collapse whitespace runs to one space (for matching quotes against passages)."""
    return _WS.sub(" ", text).strip()
