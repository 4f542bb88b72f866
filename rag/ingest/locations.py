"""Where a passage lies in its file (page, slide or cell), and the one label that names a passage to a reader.

A loader that reads a file in numbered parts (PDF pages, slides, notebook cells) records them in
`Document.metadata["parts"]` (`parts_meta`): the part kind, the character offset where each part starts in
the document's text, and its number in the file (parts that hold no text keep their number, so slide 12
is the twelfth slide a viewer shows). The chunker asks `locate` for each passage: `{"slide": 12}`, or
`{"page": 3, "page_end": 4}` when a passage runs over a page break. Slides are cut apart (`HARD_PARTS`):
a passage never holds two slides, so its slide number is exact; pages and cells are packed like sections.

`passage_label` is the one label the CLI (`rag search`, `rag ask`), the server's `sources` and the app
show for a passage: `slides.pptx · slide 12 · Fine-tuning vs prompting`. A file without numbered parts (a
markdown deck, a .docx handout) can hold several passages under the same heading: the chunker marks them
(`SHARED_LABEL`), and their label adds the passage's opening words, and "(2 of 3)" when those are shared
too (a deck repeating a slide title on several slides), so identical heading labels are never the only
thing telling two sources apart.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Any, Mapping

PART_KINDS = ("page", "slide", "cell")
HARD_PARTS = frozenset({"slide"})  # a passage never spans two of these
SHARED_LABEL = "shared_label"  # chunk metadata: another passage of the file has the same location and heading
LABEL_ORDINAL = "label_ordinal"  # chunk metadata [k, n]: k-th of n passages whose opening words are shared too
LABEL_SEP = " · "
OPENING_WORDS = 8
OPENING_CHARS = 60
_HEADING_LINE = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)")
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")  # CommonMark backslash escapes: \* is a star
_MD_DECOR = re.compile(r"(?<!\w)[*_]+|[*_]+(?!\w)|`+|\[([^\]]*)\]\([^)]*\)")  # emphasis, code, links; not snake_case
_LIST_MARK = re.compile(r"^\s*[-*+]\s+")  # a bullet


def parts_meta(kind: str, starts: list[int], numbers: list[int]) -> dict[str, Any]:
    """The `Document.metadata["parts"]` record of a file read in numbered parts.

    :param kind: one of PART_KINDS.
    :param starts: character offset of each part in the document's text, ascending.
    :param numbers: each part's 1-based number in the file, same length as `starts`.
    :raises ValueError: an unknown kind or lists of different lengths.
    """
    if kind not in PART_KINDS or len(starts) != len(numbers):
        raise ValueError(f"bad parts record: {kind!r}, {len(starts)} starts, {len(numbers)} numbers")
    return {"kind": kind, "starts": list(starts), "numbers": list(numbers)}


def part_regions(parts: Mapping[str, Any] | None, length: int) -> list[tuple[int, int]]:
    """The [start, end) character ranges a chunker must not cross: one per part for HARD_PARTS, else the whole text.

    :param parts: `Document.metadata.get("parts")`.
    :param length: the document text's length.
    """
    if not parts or parts.get("kind") not in HARD_PARTS or not parts.get("starts"):
        return [(0, length)]
    starts = list(parts["starts"])
    bounds = [0, *starts[1:], length] if starts[0] > 0 else [*starts, length]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def locate(parts: Mapping[str, Any] | None, start: int, end: int) -> dict[str, int]:
    """The location of the passage at characters [start, end) of a document with numbered `parts`.

    :param parts: `Document.metadata.get("parts")` (see `parts_meta`); None for a file without parts.
    :param start: the passage's first character.
    :param end: one past its last character.
    :returns: {} without parts; else {kind: number of the part holding `start`}, plus {kind + "_end": n}
        when the passage's last character lies in a later part n.
    """
    if not parts or not parts.get("starts"):
        return {}
    kind, starts, numbers = parts["kind"], parts["starts"], parts["numbers"]
    first = numbers[max(bisect_right(starts, start) - 1, 0)]
    last = numbers[max(bisect_right(starts, max(end - 1, start)) - 1, 0)]
    return {kind: first, **({f"{kind}_end": last} if last != first else {})}


def location_of(metadata: Mapping[str, Any]) -> dict[str, int]:
    """The location fields of a chunk's metadata: page/slide/cell and their `_end`, those present (JSON output)."""
    keys = [k for kind in PART_KINDS for k in (kind, f"{kind}_end")]
    return {k: metadata[k] for k in keys if isinstance(metadata.get(k), int)}


def location_text(location: Mapping[str, int]) -> str:
    """A location as a reader says it: "slide 12", "pages 3–4", "cells 5–7"; "" for none."""
    for kind in PART_KINDS:
        if kind in location:
            end = location.get(f"{kind}_end")
            return f"{kind}s {location[kind]}–{end}" if end else f"{kind} {location[kind]}"
    return ""


def opening_words(text: str, words: int = OPENING_WORDS, chars: int = OPENING_CHARS) -> str:
    """The first words of a passage below its heading lines, without markdown decoration, cut with "…".

    :param text: the passage.
    :param words: at most this many words.
    :param chars: at most this many characters.
    :returns: e.g. "“Outcome of the Workshop 1. Gain Foundational…”"; "" for a passage of headings only.
    """
    lines = [line for line in text.splitlines() if line.strip() and not _HEADING_LINE.match(line)]
    body = " ".join(_LIST_MARK.sub("", line, count=1) for line in lines)
    body = _MD_DECOR.sub(lambda m: m.group(1) or "", _MD_ESCAPE.sub(r"\1", body))
    found = body.split()
    if not found:
        return ""
    shown = " ".join(found[:words])
    cut = len(found) > words or len(shown) > chars
    shown = shown[:chars].rstrip()
    return f"“{shown}…”" if cut else f"“{shown}”"


def passage_label(source: str, section: str, metadata: Mapping[str, Any], text: str = "") -> str:
    """The label of one passage, the same in `rag search`, `rag ask`, the server's sources and the app.

    :param source: the file (path relative to the course folder).
    :param section: the heading path where the passage starts ("" for none).
    :param metadata: the chunk's metadata (its location fields, SHARED_LABEL and LABEL_ORDINAL are read).
    :param text: the passage's text (its opening words are shown when SHARED_LABEL is set).
    :returns: "slides.pptx · slide 12 · Fine-tuning vs prompting"; "notes.md · Week 1 > LoRA · “LoRA
        freezes the…”" when another passage of notes.md has the same heading and no page, slide or cell;
        "… · “Refer: the course…” (2 of 3)" when others open with the same words too.
    """
    parts = [source, location_text(location_of(metadata)), section]
    if metadata.get(SHARED_LABEL) and text:
        parts.append(opening_words(text))
    ordinal = metadata.get(LABEL_ORDINAL)
    if isinstance(ordinal, list) and len(ordinal) == 2:
        parts[-1] = f"{parts[-1]} ({ordinal[0]} of {ordinal[1]})".lstrip()
    return LABEL_SEP.join(p for p in parts if p)
