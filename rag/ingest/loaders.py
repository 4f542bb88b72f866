"""Load course files (.md .txt .pdf .html .pptx .docx .ipynb) into Documents; every file the walk sees is indexed
or skipped with its reason, never passed over in silence.

Each format has its reader, each through a well-kept library: PDF pages (rag.ingest.pdf, pypdf), slides
(rag.ingest.slides, python-pptx), Word documents (rag.ingest.word, python-docx), notebook cells
(rag.ingest.notebooks, nbformat), HTML (rag.ingest.html, BeautifulSoup). A file read in numbered parts
(pages, slides, cells) keeps their numbers in `Document.metadata["parts"]` (rag.ingest.locations), so each
passage can say where it lies; what a reader leaves out (hidden slides, scanned pages) is named in
`Document.metadata["notes"]`.

Why each rule:
- Text is decoded by its byte-order mark: UTF-8 (with or without BOM), UTF-16 and UTF-32 with a BOM (what
  Windows editors save as "Unicode"). Without a BOM only UTF-8 is accepted: guessing a legacy code page
  turns bytes into wrong words silently, so a bad byte is reported with its offset instead. One function
  (`rag.common.text.decode_text`) does this for course files, and `read_text` / `read_lines` there for every
  other text file a command reads (question files, queries files, rag.toml), so each gives the same one-line
  error.
- The corpus walk (`walk_corpus`, in rag.ingest.paths) lists hidden entries, unsupported types (.docx,
  images…), broken links, symlink loops, unreadable folders and special files as skipped with a reason.
- HTML `<pre>` blocks are fenced, so a `# comment` inside one is code, not a heading (the chunker reads
  headings with a CommonMark parser).

Nothing outside the course gets in, nothing inside gets lost:
- The walk reads nothing whose resolved path lies outside the course folder unless the user opts in
  (rag.ingest.paths: the one rule the app's upload and removal follow too), and walks any depth.
- `read_file` is the one funnel of every loader: any exception of a reader (pypdf's LimitReachedError on
  a decompression bomb, a RecursionError, ...) becomes UnreadableFile with its reason, so a build skips
  that file and goes on, and the app's upload check refuses it with a message.
- Text no reader sees is dropped and counted in `Document.metadata["dropped"]`: hidden HTML
  (rag.ingest.html), front matter and `<!-- -->` comments (rag.ingest.markup). Markdown images, remote
  ones included, become their alt text in every format (.md, .txt, .html, .pdf): a URL in a passage can
  reach an answer and make every visitor's browser fetch it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rag.common.files import file_sha256, os_reason
from rag.common.text import decode_text
from rag.errors import UnreadableFile
from rag.ingest.html import read_html
from rag.ingest.locations import parts_meta
from rag.ingest.markup import strip_comments, strip_front_matter
from rag.ingest.notebooks import read_ipynb
from rag.ingest.pdf import read_pdf
from rag.ingest.reader import FileText, one_line
from rag.ingest.slides import read_pptx
from rag.ingest.word import read_docx
from rag.ingest.paths import (  # the course folder and its walk; imported from here by older callers
    MAX_FILE_BYTES,
    SUPPORTED,
    SUPPORTED_LIST,
    Skipped,
    open_corpus,
    source_name,
    type_problem,
    walk_corpus,
)

LOADER_VERSION = 6  # bump when extracted text changes: indexes re-read every file on their next update
# 3: UTF-16/32 by BOM; HTML <pre> fenced as code.
# 4: every visible HTML text node, hidden text / front matter / comments dropped, images stripped everywhere.
# 5: PDFs with only an owner password read; an unclosed <!-- keeps its text; TOML front matter dropped.
# 6: .pptx, .docx and .ipynb read; page, slide and cell numbers kept as `metadata["parts"]`; scanned PDFs said.


@dataclass
class Document:
    """The text of one file, as markdown-ish plain text, with where it came from."""

    text: str
    source: str  # path relative to the corpus root, with forward slashes
    sha256: str
    metadata: dict = field(default_factory=dict)


def loader_failure(kind: str, exc: Exception) -> str:
    """The skip reason of a file whose `kind` reader raised `exc` (an error no reader anticipated).

    :returns: one line naming what failed and why; a PDF over pypdf's limits is named a decompression bomb.
    """
    detail = one_line(str(exc))[:120]
    if kind == "pdf" and type(exc).__name__ == "LimitReachedError":
        return (f"PDF too costly to read (pypdf: {detail}): a decompression bomb or an oversized stream; "
                "save a smaller, ordinary PDF")
    if isinstance(exc, RecursionError):
        return f"too deeply nested for the {kind} reader; simplify the file"
    if isinstance(exc, MemoryError):
        return f"too large for the {kind} reader's memory; split the file"
    return f"the {kind} reader failed ({type(exc).__name__}: {detail}); the file may be damaged"


def extract_text(kind: str, data: bytes, ocr: bool = False) -> FileText:
    """The text of a file of `kind` (a value of SUPPORTED): its parts, and what no reader sees, dropped.

    :param ocr: read scanned PDF pages with Tesseract (rag.ingest.ocr).

    :returns: the reader's FileText (pages, slides and cells numbered; one part for the other kinds).
    :raises UnreadableFile: the reader's own reasons (binary, encoding, broken or encrypted PDF, scanned PDF,
        not a .pptx/.docx/notebook).
    :raises Exception: whatever else a reader raised (see `read_file`).
    """
    if kind == "pdf":
        return read_pdf(data, ocr)
    if kind == "pptx":
        return read_pptx(data)
    if kind == "docx":
        return read_docx(data)
    text = decode_text(data)
    if kind == "notebook":
        return read_ipynb(text)
    if kind == "html":
        text, dropped = read_html(text)
        return FileText([text], dropped=dropped)
    dropped = {}
    if kind == "markdown":
        text, dropped["front matter"] = strip_front_matter(text)
    text, dropped["comments"] = strip_comments(text)
    return FileText([text], dropped={what: n for what, n in dropped.items() if n})


def read_file(path: Path, source: str, data: bytes | None = None, ocr: bool = False) -> Document:
    """Read one supported file (or its already-read bytes) into a Document.

    :param path: the file (its suffix picks the reader).
    :param source: the name it is indexed under.
    :param data: its bytes when already read.
    :param ocr: read scanned PDF pages with Tesseract (the setting `ocr`; rag.ingest.ocr).
    :raises UnreadableFile: with the user-facing reason (type, size, binary, encoding, broken PDF, empty).
    :raises OSError: when `data` is None and the file cannot be read.
    """
    size = len(data) if data is not None else path.stat().st_size
    problem = type_problem(path.name, size)
    if problem:
        raise UnreadableFile(problem)
    kind = SUPPORTED[path.suffix.lower()]
    if data is None:
        data = path.read_bytes()
    try:
        got = extract_text(kind, data, ocr)
    except UnreadableFile:
        raise
    except Exception as exc:  # the one funnel: no reader's error stops a build or an upload
        raise UnreadableFile(loader_failure(kind, exc)) from None
    parts = [strip_md_images(part) for part in got.parts]  # every format: no image URL reaches a passage
    if got.part_kind:
        parts = [part.strip("\n") for part in parts]
    meta: dict = {"kind": kind}
    if got.part_kind:
        numbers = got.numbers or list(range(1, len(parts) + 1))
        starts = [0]
        for part in parts[:-1]:
            starts.append(starts[-1] + len(part) + 2)
        meta["parts"] = parts_meta(got.part_kind, starts[:len(parts)], numbers)
    if got.dropped:
        meta["dropped"] = got.dropped
    if got.notes:
        meta["notes"] = list(got.notes)
    text = "\n\n".join(parts)
    if not text.strip():
        raise UnreadableFile(empty_reason(kind, got))
    return Document(text=text, source=source, sha256=file_sha256(data), metadata=meta)


def empty_reason(kind: str, got: FileText) -> str:
    """The skip reason of a file of `kind` with no text left (`got`: what its reader found, see `read_file`)."""
    if got.dropped:
        return f"no text a reader sees ({dropped_note(got.dropped)})"
    if got.notes:
        return "no text indexed: " + "; ".join(got.notes)
    what = {"pdf": "PDF has no extractable text (no text layer on any page)", "pptx": "no text on any slide",
            "notebook": "notebook with no text in any cell"}
    return what.get(kind, "empty file (no text)")


def dropped_note(dropped: dict[str, int]) -> str:
    """The note of a file read with text dropped: "dropped text no reader sees: 9 characters of hidden HTML".

    :param dropped: characters dropped by kind (`Document.metadata["dropped"]`).
    """
    return "dropped text no reader sees: " + ", ".join(f"{n} characters of {what}" for what, n in dropped.items())


def iter_files(root: Path, follow_outside_links: bool = False) -> Iterable[Path]:
    """The files under `root` (or `root` itself) that `walk_corpus` would read, in its order."""
    yield from walk_corpus(root, follow_outside_links)[0]


def same_content(source: str) -> str:
    """The skip reason for a file whose bytes are identical to the indexed file `source`."""
    return f"same content as {source} (identical files are indexed once)"


def load_documents(root: Path, follow_outside_links: bool = False, ocr: bool = False
                   ) -> tuple[list[Document], list[Skipped]]:
    """Load every file under `root` (not incrementally: see rag.index.build for the index's loader).

    :param follow_outside_links: read links that lead out of `root` too (see rag.ingest.paths).
    :param ocr: read scanned PDF pages with Tesseract (rag.ingest.ocr).
    :returns: (documents, skipped): every entry the walk sees is in one of the two; of identical files
        only the first (in path order) is a document.
    :raises RagError: when `root` cannot be walked (see `open_corpus`).
    """
    root = open_corpus(root)
    paths, skipped = walk_corpus(root, follow_outside_links)
    docs: list[Document] = []
    first_with: dict[str, str] = {}
    for path in paths:
        src = source_name(path, root)
        try:
            doc = read_file(path, src, ocr=ocr)
        except UnreadableFile as exc:
            skipped.append(Skipped(src, str(exc)))
            continue
        except OSError as exc:
            skipped.append(Skipped(src, f"cannot read: {os_reason(exc)}"))
            continue
        if doc.sha256 in first_with:
            skipped.append(Skipped(src, same_content(first_with[doc.sha256])))
            continue
        first_with[doc.sha256] = src
        docs.append(doc)
    return docs, skipped


# `![alt](url)`, `![alt][ref]`, `![alt][]` and the shortcut `![alt]` (an image when `[alt]: url` is defined);
# not `\![...]`, which is an escaped "!" and a link.
_MD_IMAGE = re.compile(r"(?<!\\)!\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])?")


def strip_md_images(text: str) -> str:
    """Replace markdown images (inline `![alt](url)`, reference `![alt][ref]`, shortcut `![alt]`) by their alt text.

    Image links carry no words worth embedding or quoting, and a remote one copied into an answer makes
    every visitor's browser fetch its URL. Repeated until none is left: removing an inner image can
    complete an outer one (`![![a](u)](v)`).
    """
    while True:
        stripped = _MD_IMAGE.sub(lambda m: m.group(1).strip(), text)
        if stripped == text:
            return text
        text = stripped
