"""What every file reader returns (`FileText`) and raises (`rag.errors.UnreadableFile`), shared by the format
modules (rag.ingest.pdf, slides, word, notebooks) and the funnel that calls them (rag.ingest.loaders.read_file)."""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field

from rag.errors import UnreadableFile

MAX_UNZIPPED_BYTES = 512 * 1024 * 1024  # what a .pptx or .docx may unpack to (a zip bomb stops here)
_HEADING_START = re.compile(r"^( {0,3})(#{1,6}(?:[ \t]|$))", re.M)


@dataclass
class FileText:
    """The text a reader took from one file, as markdown-ish parts in file order.

    :param parts: the text of each part: one for a file read whole, one per page, slide or cell otherwise.
    :param part_kind: "page", "slide" or "cell" when the parts are numbered in the file, else None.
    :param numbers: each part's 1-based number in the file (parts left out keep theirs); None: 1, 2, 3...
    :param dropped: characters of text no reader sees that were dropped, by kind (n > 0 only).
    :param notes: one line each for what was not read and why ("slide 4 is hidden in the deck, not indexed").
    """

    parts: list[str]
    part_kind: str | None = None
    numbers: list[int] | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def one_line(text: str) -> str:
    """`text` with its whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(text.split())


def escape_headings(text: str) -> str:
    """`text` with a backslash before any `#` that would start a markdown heading line.

    For text that is not markdown (a slide body, a Word paragraph): "# of students" is a sentence there,
    and the chunker reads `#` lines as headings.
    """
    return _HEADING_START.sub(r"\1\\\2", text)


def numbered(numbers: list[int]) -> str:
    """Part numbers as a reader says them: "3", "3 and 5", "3, 5 and 9"."""
    shown = [str(n) for n in numbers]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def check_office_zip(data: bytes, what: str) -> None:
    """Refuse an Office file (.pptx, .docx: a zip archive) that is no zip or would unpack past MAX_UNZIPPED_BYTES.

    A 50 MiB file of deflated zeros unpacks to gigabytes; the readers would try to hold it all in memory.

    :param data: the file's bytes.
    :param what: its kind for the message ("PowerPoint .pptx").
    :raises UnreadableFile: not a zip archive, or its members' declared sizes add up past the limit.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError):
        raise UnreadableFile(f"not a {what} file (not a zip archive: damaged, or an old binary file renamed); "
                             "save it again in that format") from None
    if unpacked > MAX_UNZIPPED_BYTES:
        raise UnreadableFile(f"{what} file unpacks to {unpacked // 1_048_576} MiB (over "
                             f"{MAX_UNZIPPED_BYTES // 1_048_576} MiB): a zip bomb or an oversized file; "
                             "save a smaller copy")
