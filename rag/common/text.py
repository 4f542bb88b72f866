"""Shared text helpers: decoding a text file by its byte-order mark, reading the text files a command is given,
and whitespace normalisation for matching quotes against passages.

Why by hand: Python's codecs decode a known encoding but pick none; guessing libraries (charset-normalizer,
chardet) guess a legacy code page for bytes that are not UTF-8, which turns them into wrong words silently.
The rule here is the one docs/guide/course-files.md states: UTF-8 (BOM optional), or UTF-16/UTF-32 with a BOM, else an error naming the
byte offset. One function (`decode_text`) does this for course files (rag.ingest.loaders), and
`read_text` / `read_lines` for every other text file a command reads (question files, queries files,
rag.toml), so each gives the same one-line error.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rag.common.files import os_reason
from rag.errors import RagError, UnreadableFile

# UTF-32 before UTF-16: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


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


_WS = re.compile(r"\s+")


def normalize_ws(text: str) -> str:
    """Collapse whitespace runs to one space (for matching quotes against passages)."""
    return _WS.sub(" ", text).strip()
