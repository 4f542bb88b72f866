"""Jupyter notebooks (.ipynb, read with nbformat): one part per cell, so a passage says "cell 5".

Markdown cells are markdown (their headings give the heading path of the cells after them, their
`<!-- -->` comments are dropped and counted as in .md files); code cells become fenced code blocks in the
notebook's language (a `# comment` in code is not a heading); raw cells are text. Outputs are not read:
they are what the code printed on the author's machine (tracebacks, tables of numbers, images), not what
was written for students. Cells are numbered from the top, 1 for the first, empty ones included.
"""

from __future__ import annotations

import warnings

from rag.errors import UnreadableFile
from rag.ingest.html import fence_code
from rag.ingest.markup import strip_comments
from rag.ingest.reader import FileText, one_line


def read_ipynb(text: str) -> FileText:
    """The text of each cell of a notebook, outputs left out.

    :param text: the notebook's JSON, decoded.
    :returns: one part per non-empty cell (kind "cell", numbered from 1 in the notebook).
    :raises UnreadableFile: not JSON, or not a notebook nbformat can read (its reason).
    """
    import nbformat
    from nbformat.reader import NotJSONError

    try:
        with warnings.catch_warnings():  # nbformat warns of cells without ids (older notebooks) on stderr
            warnings.simplefilter("ignore")
            notebook = nbformat.reads(text, as_version=4)
    except NotJSONError:
        raise UnreadableFile("not a Jupyter notebook (not valid JSON); save it again from Jupyter") from None
    except Exception as exc:  # nbformat's ValidationError and reader errors
        raise UnreadableFile(f"not a valid Jupyter notebook ({type(exc).__name__}: {one_line(str(exc))[:100]}); "
                             "save it again from Jupyter") from None
    language = notebook_language(notebook.get("metadata") or {})
    parts, numbers, dropped = [], [], 0
    for number, cell in enumerate(notebook.cells, start=1):
        source = cell.get("source") or ""
        if isinstance(source, list):
            source = "".join(source)
        source = source.replace("\r\n", "\n").replace("\r", "\n")
        if not source.strip():
            continue
        if cell.get("cell_type") == "code":
            fenced = fence_code(source)
            first = fenced.index("\n")
            source = fenced[:first] + language + fenced[first:]
        elif cell.get("cell_type") == "markdown":
            source, n = strip_comments(source)
            dropped += n
        parts.append(source.strip("\n"))
        numbers.append(number)
    return FileText(parts, "cell", numbers, dropped={"comments": dropped} if dropped else {})


def notebook_language(metadata: dict) -> str:
    """The code language of a notebook for its fences ("python"), from its metadata; "" when unnamed."""
    info = metadata.get("language_info") or {}
    name = info.get("name") or (metadata.get("kernelspec") or {}).get("language") or ""
    return "".join(ch for ch in str(name) if ch.isalnum() or ch in "+-#_.")[:20]
