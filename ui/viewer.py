"""A source followed into its document: the passage with the text around it, the quote marked, the file.

The file is read again from the course folder the index was built from (the manifest's `corpus_root`,
else `corpus_dir`), through the loaders every index build uses (rag.ingest.loaders.read_file), so the text
around the passage is the text the passage was cut from. A source's name comes from a stored answer, so
it is checked like any path from outside: relative, no `..`, and inside the course folder by the indexer's
own rule (rag.ingest.paths.outside_course, honouring `follow_outside_links`). When the file changed since
the answer and the passage is no longer in it, the view says so and shows the passage as it was answered.
"""

from __future__ import annotations

import bisect
import functools
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rag.answering.answer import Source
from rag.answering.grounding import find_span
from rag.common.files import os_reason
from rag.config import Settings
from rag.errors import RagError, UnreadableFile
from rag.ingest.loaders import Document, read_file
from rag.ingest.paths import outside_course
from ui.highlight import PASSAGE_COLOR, QUOTE_COLOR, block_ranges

CONTEXT_CHARS = 1200  # text shown before and after the passage, widened to whole paragraphs


@dataclass(frozen=True)
class DocumentView:
    """What the viewer shows of one source.

    :param path: the file in the course folder.
    :param text: the window of the document's text around the passage (the passage alone when not found).
    :param span: the character range of `text` to highlight (the quote, else the whole passage), or None.
    :param color: QUOTE_COLOR for the supporting words, PASSAGE_COLOR for a passage that supports nothing.
    :param location: where the passage is, e.g. "page 3 of 12", "slide 2 of 9" ("" when the file has no numbered parts).
    :param before: characters of the document before the window (0: it starts the document).
    :param after: characters after the window.
    :param note: why the passage is shown alone ("" when it was found in the file).
    """

    path: Path
    text: str
    span: tuple[int, int] | None
    color: str
    location: str = ""
    before: int = 0
    after: int = 0
    note: str = ""


def course_root(settings: Settings) -> Path:
    """The course folder the live index was built from (its manifest's `corpus_root`), else `corpus_dir`."""
    from rag.index.store import current_generation, validate_manifest

    try:
        gen = current_generation(Path(settings.index_dir))
        manifest = validate_manifest(json.loads((gen / "manifest.json").read_text(encoding="utf-8")), gen)
        root = manifest.get("corpus_root")
    except (RagError, OSError, ValueError):
        root = None
    return Path(root) if root else Path(settings.corpus_dir)


def course_file(root: Path, source: str, follow_outside_links: bool = False) -> Path:
    """The file a source names, checked to be a file of the course folder.

    :param root: the course folder.
    :param source: the source's name, relative to `root` with forward slashes (as the index stores it).
    :param follow_outside_links: the operator's opt-in to links that lead out of the course (the setting).
    :returns: the path inside `root`.
    :raises RagError: an absolute name, `..`, a link out of the course, or no such file any more.
    """
    rel = PurePosixPath(source)
    if not source or "\x00" in source or "\\" in source or rel.is_absolute() or ".." in rel.parts:
        raise RagError(f"{source!r} is not a file of the course folder {root}; the app opens nothing else")
    root = Path(root).resolve()
    path = root.joinpath(*rel.parts)
    leads_to = outside_course(path, root, follow_outside_links)
    if leads_to is not None:
        raise RagError(f"{source} leads outside the course folder {root} (to {leads_to}); the app does not open it")
    if not path.is_file():
        raise RagError(f"{source} is no longer in the course folder {root} (removed or renamed since this answer)")
    return path


@functools.lru_cache(maxsize=8)
def _load(path: Path, source: str, mtime_ns: int, size: int) -> tuple[Document, tuple[tuple[int, int], ...]]:
    doc = read_file(path, source)
    return doc, tuple(block_ranges(doc.text))


def load_document(path: Path, source: str) -> tuple[Document, tuple[tuple[int, int], ...]]:
    """The file's text as the index read it, and its code and display-math blocks (cached while unchanged).

    :raises RagError: the file cannot be read (the loader's or the system's reason).
    """
    try:
        st = path.stat()
        return _load(path, source, st.st_mtime_ns, st.st_size)
    except UnreadableFile as exc:
        raise RagError(f"{source} cannot be read: {exc}") from None
    except OSError as exc:
        raise RagError(f"cannot read {source}: {os_reason(exc)}") from None


def quote_span(src: Source) -> tuple[int, int] | None:
    """Where the supporting words of `src` are in its passage text: the verified quote, else the snippet of a
    supporting passage; None for a passage that supports nothing."""
    q = src.quote
    if q is not None and 0 <= q.start < q.end <= len(src.text) and src.text[q.start:q.end] == q.text:
        return q.start, q.end
    if q is not None:
        return find_span(src.text, q.text)
    return find_span(src.text, src.snippet) if src.cited else None


def _widen(text: str, blocks: tuple[tuple[int, int], ...], start: int, end: int, chars: int) -> tuple[int, int]:
    """[start, end) grown by about `chars` on each side to paragraph starts, never cutting a code/math block."""
    lo = max(0, start - chars)
    if lo > 0:
        para = text.rfind("\n\n", max(0, lo - chars), lo)
        lo = para + 2 if para >= 0 else text.rfind("\n", 0, lo) + 1
    hi = min(len(text), end + chars)
    if hi < len(text):
        para = text.find("\n\n", hi, hi + chars)
        nl = text.find("\n", hi)
        hi = para if para >= 0 else (nl if nl >= 0 else len(text))
    for a, b in blocks:
        if a < lo < b:
            lo = a
        if a < hi < b:
            hi = b
    return lo, hi


def document_view(settings: Settings, src: Source, context_chars: int = CONTEXT_CHARS) -> DocumentView:
    """The passage of `src` in its document, with the supporting words (or the passage) to highlight.

    :param settings: the app's settings (index folder, course folder, `follow_outside_links`).
    :param src: a source of an answer (its passage text and quote as answered).
    :param context_chars: characters of context before and after the passage (widened to paragraphs).
    :returns: the view.
    :raises RagError: the file is not in the course folder, or cannot be read.
    """
    path = course_file(course_root(settings), src.source, settings.follow_outside_links)
    doc, blocks = load_document(path, src.source)
    quote = quote_span(src)
    color = QUOTE_COLOR if quote else PASSAGE_COLOR
    at = doc.text.find(src.text)
    if at >= 0:
        p0, p1 = at, at + len(src.text)
    else:
        found = find_span(doc.text, src.text)
        if found is None:
            return DocumentView(path, src.text, quote or (0, len(src.text)), color,
                                note=f"{src.source} changed since this answer: its passage is shown as it was "
                                     "answered, without the text around it.")
        p0, p1 = found
        if quote:  # offsets in the stored passage no longer hold: find the words in the file's passage
            quote = find_span(doc.text[p0:p1], src.text[quote[0]:quote[1]])
    lo, hi = _widen(doc.text, blocks, p0, p1, context_chars)
    span = (p0 + quote[0] - lo, p0 + quote[1] - lo) if quote else (p0 - lo, p1 - lo)
    return DocumentView(path, doc.text[lo:hi], span, color, location=page_of(doc, p0), before=lo,
                        after=len(doc.text) - hi)


def page_of(doc: Document, offset: int) -> str:
    """Where `offset` is in a file read in numbered parts ("page 2 of 3", "slide 4 of 12", "cell 7 of 20":
    `Document.metadata["parts"]`, rag.ingest.locations), else ''."""
    parts = doc.metadata.get("parts") or {}
    starts, numbers = parts.get("starts") or [], parts.get("numbers") or []
    if not starts or len(starts) != len(numbers):
        return ""
    number = numbers[max(bisect.bisect_right(starts, offset) - 1, 0)]
    return f"{parts.get('kind', 'part')} {number} of {max(numbers)}"


def mime_type(path: Path) -> str:
    """The MIME type a download of `path` is served with (application/octet-stream when unknown)."""
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"
