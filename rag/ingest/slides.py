"""PowerPoint decks (.pptx, read with python-pptx): one part per slide, its title a heading, then its body, its
tables and its speaker notes; the slide number is kept, so a passage says "slide 12".

Read from each slide, top to bottom then left to right: the title (a `#` heading: the passage's section),
every text frame (one line per paragraph, indented by level), every table (one line per row, cells between
` | `), shapes inside groups, then the speaker notes ("Notes: ..."). Not read: pictures, charts and
SmartArt (no text python-pptx exposes), the slide master's and layout's own text (repeated on every slide).
A hidden slide (hidden in the deck, skipped in a slide show: often backup or answer slides) is not indexed
and is named in a note, as hidden HTML is dropped and counted (rag.ingest.html).
"""

from __future__ import annotations

import io
from typing import Any, Iterator

from rag.errors import UnreadableFile
from rag.ingest.reader import FileText, check_office_zip, escape_headings, numbered


def read_pptx(data: bytes) -> FileText:
    """The text of each slide of a .pptx deck.

    :param data: the file's bytes.
    :returns: one part per shown slide (kind "slide", numbered as in the deck; hidden slides left out and
        named in `notes`).
    :raises UnreadableFile: not a PowerPoint file (a damaged zip, a .ppt renamed, another Office file).
    """
    from pptx import Presentation
    from pptx.exc import PackageNotFoundError

    check_office_zip(data, "PowerPoint .pptx")
    try:
        deck = Presentation(io.BytesIO(data))
    except (PackageNotFoundError, KeyError, ValueError) as exc:
        raise UnreadableFile(f"not a PowerPoint .pptx file ({type(exc).__name__}); save it again as .pptx "
                             "(old .ppt files need converting)") from None
    parts, numbers, hidden = [], [], []
    for number, slide in enumerate(deck.slides, start=1):
        if slide.element.get("show") in ("0", "false"):
            hidden.append(number)
            continue
        parts.append(slide_text(slide))
        numbers.append(number)
    notes = []
    if hidden:
        which, them = ("slide", "it") if len(hidden) == 1 else ("slides", "them")
        notes.append(f"{which} {numbered(hidden)} hidden in the deck, not indexed (unhide {them} to index {them})")
    return FileText(parts, "slide", numbers, notes=notes)


def slide_text(slide: Any) -> str:
    """One slide as markdown-ish text: "# title", body lines, table rows, "Notes: ...".

    :param slide: a python-pptx Slide.
    """
    title_shape = slide.shapes.title
    title = " ".join((title_shape.text_frame.text if title_shape is not None else "").split())
    blocks = [f"# {title}"] if title else []
    for shape in reading_order(slide.shapes):
        if title_shape is not None and shape.shape_id == title_shape.shape_id:
            continue
        block = shape_text(shape)
        if block:
            blocks.append(escape_headings(block))
    if slide.has_notes_slide:
        notes = slide.notes_slide.notes_text_frame
        text = (notes.text if notes is not None else "").replace("\v", "\n").strip()
        if text:
            blocks.append(escape_headings("Notes: " + text))
    return "\n\n".join(blocks)


def reading_order(shapes: Any) -> Iterator[Any]:
    """The shapes of a slide or group, top to bottom then left to right, groups opened in place."""
    def position(shape: Any) -> tuple[int, int]:
        return (shape.top or 0, shape.left or 0)

    for shape in sorted(shapes, key=position):
        if hasattr(shape, "shapes"):  # a group shape
            yield from reading_order(shape.shapes)
        else:
            yield shape


def shape_text(shape: Any) -> str:
    """The text of one shape: its paragraphs (indented two spaces a level) or its table rows; "" for none."""
    if getattr(shape, "has_table", False):
        rows = []
        for row in shape.table.rows:
            cells = [" ".join(cell.text.split()) for cell in row.cells]
            if any(cells):
                rows.append(" | ".join(cells))
        return "\n".join(rows)
    if not getattr(shape, "has_text_frame", False):
        return ""
    lines = []
    for paragraph in shape.text_frame.paragraphs:
        text = paragraph.text.replace("\v", " ").strip()
        if text:
            lines.append("  " * paragraph.level + text)
    return "\n".join(lines)
