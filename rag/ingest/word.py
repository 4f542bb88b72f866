"""Word documents (.docx, read with python-docx): handouts and syllabi as markdown-ish text whose headings
become the heading path of their passages, with tables kept as text.

Read, in document order: paragraphs (the Title style a level-1 heading with the Heading 1-9 styles one
level under it, else Heading n a level-n heading; list paragraphs as `- ` lines) and tables (one line per
row, cells between ` | `, a cell merged across columns once, tables inside cells flattened into their
cell). Not read: headers and footers (the same line on every page), footnotes, comments, text boxes and
pictures (python-docx exposes no text for them in document order). A .docx has no fixed pages (they depend
on the printer and fonts), so its passages carry no page number: the heading path tells them apart.
"""

from __future__ import annotations

import io
import re
from typing import Any

from rag.errors import UnreadableFile
from rag.ingest.reader import FileText, check_office_zip, escape_headings

_HEADING_STYLE = re.compile(r"Heading ([1-9])$")


def read_docx(data: bytes) -> FileText:
    """The text of a .docx document, its headings as `#` lines.

    :param data: the file's bytes.
    :returns: one part (a .docx has no numbered parts).
    :raises UnreadableFile: not a Word .docx file (a damaged zip, a .doc renamed, another Office file).
    """
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    check_office_zip(data, "Word .docx")
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, KeyError, ValueError) as exc:
        raise UnreadableFile(f"not a Word .docx file ({type(exc).__name__}); save it again as .docx "
                             "(old .doc files need converting)") from None
    items = list(document.iter_inner_content())
    has_title = any(style_name(item) == "Title" for item in items)
    blocks = []
    for item in items:
        block = table_text(item) if hasattr(item, "rows") else paragraph_text(item, 1 if has_title else 0)
        if block:
            blocks.append(block)
    return FileText(["\n\n".join(blocks)])


def style_name(item: Any) -> str:
    """The style name of a paragraph or table ("" when it has none)."""
    style = getattr(item, "style", None)
    return (style.name or "") if style is not None else ""


def paragraph_text(paragraph: Any, shift: int) -> str:
    """One paragraph as a markdown line: a `#` heading, a `- ` list item, or its text.

    :param paragraph: a python-docx Paragraph.
    :param shift: levels added to "Heading n" styles (1 when the document has a Title, the level-1 heading).
    """
    text = " ".join(paragraph.text.split())
    if not text:
        return ""
    name = style_name(paragraph)
    if name == "Title":
        return f"# {text}"
    heading = _HEADING_STYLE.match(name)
    if heading:
        return "#" * min(int(heading.group(1)) + shift, 6) + " " + text
    if name.startswith("List"):
        return f"- {escape_headings(text)}"
    return escape_headings(text)


def table_text(table: Any) -> str:
    """A table as text: one line per row, its cells between " | " (a merged cell once)."""
    rows = []
    for row in table.rows:
        cells, i, found = [], 0, row.cells
        while i < len(found):
            cell = found[i]
            cells.append(cell_text(cell))
            i += max(cell.grid_span, 1)
        if any(cells):
            rows.append(" | ".join(cells))
    return escape_headings("\n".join(rows))


def cell_text(cell: Any) -> str:
    """The words of one table cell: its paragraphs, then the rows of the tables inside it, on one line."""
    words = [" ".join(p.text.split()) for p in cell.paragraphs]
    words += [table_text(inner).replace("\n", " / ") for inner in cell.tables]
    return " ".join(w for w in words if w)
