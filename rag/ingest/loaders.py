"""Load course files (.md .txt .pdf .html) into Documents; every file the walk sees is indexed or skipped with
its reason, never passed over in silence.

Why each rule (issue 11):
- Text is decoded by its byte-order mark: UTF-8 (with or without BOM), UTF-16 and UTF-32 with a BOM (what
  Windows editors save as "Unicode"). Without a BOM only UTF-8 is accepted: guessing a legacy code page
  turns bytes into wrong words silently, so a bad byte is reported with its offset instead. One function
  (`decode_text`) does this for course files, and `read_text` / `read_lines` for every other text file a
  command reads (question files, queries files, rag.toml), so each gives the same one-line error.
- The corpus walk (`walk_corpus`) lists hidden entries, unsupported types (.docx, images…), broken links,
  symlink loops, unreadable folders and special files as skipped with a reason. Symlinked folders are
  followed once; a link back to one of its own ancestors is a loop and is not followed.
- HTML `<pre>` blocks are fenced, so a `# comment` inside one is code, not a heading (the chunker reads
  headings with a CommonMark parser).
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from rag.errors import RagError

SUPPORTED = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".pdf": "pdf", ".html": "html", ".htm": "html"}
MAX_FILE_BYTES = 50 * 1024 * 1024
LOADER_VERSION = 3  # bump when extracted text changes: indexes re-read every file on their next update
# 3: UTF-16/32 by BOM; HTML <pre> fenced as code.
SUPPORTED_LIST = ", ".join(sorted(SUPPORTED))
# UTF-32 before UTF-16: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


@dataclass
class Document:
    """The text of one file, as markdown-ish plain text, with where it came from."""

    text: str
    source: str  # path relative to the corpus root, with forward slashes
    sha256: str
    metadata: dict = field(default_factory=dict)


@dataclass
class Skipped:
    """A file or folder that was not indexed, and why (one line a user can act on)."""

    source: str  # path relative to the corpus root; folders end with "/"
    reason: str


class UnreadableFile(Exception):
    """Raised by a reader when a file has no usable text; the message is the reason shown to the user."""


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


def bom_encoding(head: bytes) -> str | None:
    """The Python codec named by the byte-order mark at the start of `head`, or None without one.

    :param head: the first bytes of a file (4 are enough).
    :returns: "utf-32", "utf-8-sig" or "utf-16" (codecs that consume the mark themselves), or None.
    """
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    return None


def decode_text(data: bytes) -> str:
    """Decode the bytes of a text file: UTF-8 (BOM optional), or UTF-16/UTF-32 with a BOM; newlines become \\n.

    :param data: the whole file.
    :returns: the text, without the BOM, with \\r\\n and \\r turned into \\n.
    :raises UnreadableFile: binary content (NUL bytes or control characters), or a byte sequence that is
        not valid in the encoding (the reason names the byte offset and says to re-save as UTF-8).
    """
    encoding = bom_encoding(data[:4])
    if encoding is None and b"\x00" in data[:8192]:
        raise UnreadableFile("binary file (contains NUL bytes), not text; "
                             "if it is UTF-16 text, re-save it as UTF-8 or with a byte-order mark")
    label = {"utf-32": "UTF-32", "utf-16": "UTF-16"}.get(encoding or "", "UTF-8")
    try:
        text = data.decode(encoding or "utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not valid {label} (byte {exc.start}); re-save the file as UTF-8") from None
    # Control characters other than whitespace mean this is not a text document.
    bad = sum(1 for ch in text[:8192] if ord(ch) < 32 and ch not in "\n\r\t\f")
    if bad > 8:
        raise UnreadableFile("binary content in a text file")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: Path, what: str) -> str:
    """Read a text file a command was given (question file, queries file, config file), decoded by BOM.

    :param path: the file.
    :param what: what the file is, for the message ("question file").
    :returns: its text (see `decode_text`).
    :raises RagError: one line naming `what` and `path`: missing, a folder, a symlink loop, unreadable,
        binary, or not valid UTF-8/UTF-16/UTF-32.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RagError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise RagError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise RagError(f"cannot read {what} {path}: {os_reason(exc)}") from None
    try:
        return decode_text(data)
    except UnreadableFile as exc:
        raise RagError(f"cannot read {what} {path}: {exc}") from None


def read_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Lines of a binary stream (stdin, a pipe) as they arrive, without their line ends.

    UTF-8 is decoded line by line (a BOM on the first line is dropped), so a reader on a pipe gets each
    line at once; a UTF-16/UTF-32 BOM makes it read the rest of the stream and decode it whole.

    :param stream: a binary stream with readline().
    :param name: how to name the stream in errors ("stdin").
    :raises RagError: a line that is not valid UTF-8 or holds NUL bytes (naming the line number).
    """
    first = stream.readline()
    encoding = bom_encoding(first[:4])
    if encoding in ("utf-16", "utf-32"):
        try:
            text = decode_text(first + stream.read())
        except UnreadableFile as exc:
            raise RagError(f"cannot read {name}: {exc}") from None
        yield from text.split("\n")
        return
    line, n = first, 1
    while line:
        try:
            text = line.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise RagError(f"{name} line {n}: not valid UTF-8 (byte {exc.start} of the line); "
                           "re-save it as UTF-8") from None
        if "\x00" in text:
            raise RagError(f"{name} line {n}: binary data (NUL bytes), not text")
        yield text.rstrip("\r\n")
        line, n = stream.readline(), n + 1


def os_reason(exc: OSError) -> str:
    """A short, user-facing reason for an OS error (a symlink loop is named as such)."""
    if exc.errno == errno.ELOOP:
        return "symlink loop (a link that points back to itself or its own folder); fix or remove the link"
    return exc.strerror or str(exc)


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
_BACKTICK_RUN = re.compile(r"`{3,}")


def fence_code(code: str) -> str:
    """`code` as a CommonMark fenced block whose fence is longer than any backtick run inside it."""
    longest = max((len(m.group(0)) for m in _BACKTICK_RUN.finditer(code)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{code.strip(chr(10))}\n{fence}"


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
        elif el.name == "pre":
            lines.append(fence_code(txt))  # a "# comment" in code is not a heading
        else:
            lines.append(txt)
    if not lines:  # a page with text outside the usual block tags
        lines = [soup.get_text("\n", strip=True)]
    return "\n\n".join(lines)


def type_problem(name: str, size: int) -> str | None:
    """Why a file named `name` of `size` bytes is not indexed before it is even read, or None.

    :returns: "unsupported file type …" or "file too large …", or None for a supported file.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED:
        kind = suffix or "(no extension)"
        return f"unsupported file type {kind}; indexed types are {SUPPORTED_LIST} (export or save it as one of them)"
    if size > MAX_FILE_BYTES:
        return f"file too large ({size // 1_048_576} MiB > {MAX_FILE_BYTES // 1_048_576} MiB)"
    return None


def read_file(path: Path, source: str, data: bytes | None = None) -> Document:
    """Read one supported file (or its already-read bytes) into a Document.

    :param path: the file (its suffix picks the reader).
    :param source: the name it is indexed under.
    :param data: its bytes when already read.
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
    digest = file_sha256(data)
    meta: dict = {"kind": kind}
    if kind == "pdf":
        text, extra = _read_pdf(data)
        meta.update(extra)
    elif kind == "html":
        text = _read_html(decode_text(data))
    else:
        text = decode_text(data)
        if kind == "markdown":
            text = strip_md_images(text)
    if not text.strip():
        raise UnreadableFile("empty file (no text)" if kind != "pdf" else "PDF has no extractable text (scanned images?)")
    return Document(text=text, source=source, sha256=digest, metadata=meta)


def open_corpus(root: Path) -> Path:
    """The corpus folder or file `root`, resolved, after checking it can be walked.

    :raises RagError: one line when `root` does not exist, is a symlink loop or a broken link, cannot
        be read, or is neither a file nor a folder.
    """
    root = Path(root)
    try:
        resolved = root.resolve(strict=True)
        st = resolved.stat()
    except FileNotFoundError:
        broken = " (a broken symlink)" if root.is_symlink() else ""
        raise RagError(f"corpus folder {root} does not exist{broken}: give a folder of "
                       f"{SUPPORTED_LIST} files") from None
    except RuntimeError:  # Python < 3.13 reports a symlink loop in resolve() as RuntimeError
        raise RagError(f"corpus {root}: {os_reason(OSError(errno.ELOOP, 'loop'))}") from None
    except OSError as exc:
        raise RagError(f"corpus {root}: {os_reason(exc)}") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise RagError(f"corpus {root} is neither a folder nor a file")
    return resolved


def walk_corpus(root: Path) -> tuple[list[Path], list[Skipped]]:
    """Every entry under `root` (a folder or one file): the files to read, and the rest with its reason.

    Sorted by path (the same order as `sorted(root.rglob("*"))`). Skipped with a reason: hidden files
    and folders (name starts with "."; a folder is one line), unsupported types, files over
    MAX_FILE_BYTES, broken links, symlink loops, a second link to a folder already walked, folders that
    cannot be listed, and devices, pipes or sockets.

    :param root: the corpus, as returned by `open_corpus` (resolved).
    :returns: (files to read, skipped entries); sources are relative to `root` (see `source_name`).
    :raises RagError: from `open_corpus` when `root` itself cannot be walked.
    """
    root = open_corpus(root)
    files: list[Path] = []
    skipped: list[Skipped] = []
    if root.is_file():
        problem = type_problem(root.name, root.stat().st_size)
        return ([root], skipped) if problem is None else ([], [Skipped(root.name, problem)])
    st = root.stat()
    walked: dict[tuple[int, int], str] = {(st.st_dev, st.st_ino): ""}

    def visit(folder: Path, rel: str, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skipped(f"{rel}/", f"cannot list folder: {os_reason(exc)}"))
            return
        for entry in entries:
            src = f"{rel}/{entry.name}" if rel else entry.name
            if entry.name.startswith("."):
                is_dir = entry.is_dir()
                what = "folder" if is_dir else "file"
                skipped.append(Skipped(src + "/" * is_dir, f"hidden {what} (name starts with '.'), not read"))
                continue
            try:
                est = entry.stat()  # follows symlinks
            except OSError as exc:
                if exc.errno == errno.ENOENT and entry.is_symlink():
                    target = os.readlink(entry.path)
                    skipped.append(Skipped(src, f"broken symlink (its target {target} does not exist)"))
                else:
                    skipped.append(Skipped(src, os_reason(exc)))
                continue
            if stat.S_ISDIR(est.st_mode):
                key = (est.st_dev, est.st_ino)
                if key in ancestors:
                    inside = walked[key] + "/" if walked[key] else "the corpus folder"
                    skipped.append(Skipped(f"{src}/", f"symlink loop: links back to {inside}, not followed"))
                elif key in walked:
                    skipped.append(Skipped(f"{src}/", f"same folder as {walked[key]}/, read there"))
                else:
                    walked[key] = src
                    visit(Path(entry.path), src, ancestors | {key})
            elif stat.S_ISREG(est.st_mode):
                problem = type_problem(entry.name, est.st_size)
                if problem:
                    skipped.append(Skipped(src, problem))
                else:
                    files.append(Path(entry.path))
            else:
                skipped.append(Skipped(src, "not a regular file (a device, pipe or socket)"))

    visit(root, "", frozenset(walked))
    return files, skipped


def iter_files(root: Path) -> Iterable[Path]:
    """The files under `root` (or `root` itself) that `walk_corpus` would read, in its order."""
    yield from walk_corpus(root)[0]


def source_name(path: Path, root: Path) -> str:
    """The stable name a file is indexed under: its path relative to the corpus root."""
    if root.is_file():
        return path.name
    return path.relative_to(root).as_posix()


def same_content(source: str) -> str:
    """The skip reason for a file whose bytes are identical to the indexed file `source`."""
    return f"same content as {source} (identical files are indexed once)"


def load_documents(root: Path) -> tuple[list[Document], list[Skipped]]:
    """Load every file under `root` (not incrementally: see rag.index.build for the index's loader).

    :returns: (documents, skipped): every entry the walk sees is in one of the two; of identical files
        only the first (in path order) is a document.
    :raises RagError: when `root` cannot be walked (see `open_corpus`).
    """
    root = open_corpus(root)
    paths, skipped = walk_corpus(root)
    docs: list[Document] = []
    first_with: dict[str, str] = {}
    for path in paths:
        src = source_name(path, root)
        try:
            doc = read_file(path, src)
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


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")


def strip_md_images(text: str) -> str:
    """Replace markdown images by their alt text: image links carry no words worth embedding or quoting."""
    return _MD_IMAGE.sub(lambda m: m.group(1).strip(), text)


_WS = re.compile(r"\s+")


def normalize_ws(text: str) -> str:
    """Collapse whitespace runs to one space (for matching quotes against passages)."""
    return _WS.sub(" ", text).strip()
