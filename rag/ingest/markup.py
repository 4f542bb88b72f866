"""Markdown and text files: what a reader of the rendered file never sees is not indexed.

- Front matter (a YAML block between `---` lines, or `---` and `...`, at the very start of a markdown file,
  as Jekyll, Hugo, Obsidian and MkDocs write it; or Hugo's TOML block between `+++` lines) is metadata, not
  page text: an instructor's answer key there was indexed and shown to students. Dropped when every line
  of it looks like YAML (`key: value`, `- item`, indented or `#` lines) or TOML (`key = value`, `[table]`,
  indented or `#` lines); a `---` rule around an ordinary paragraph stays.
- `<!-- … -->` comments in .md and .txt files are dropped: no rendered page shows them, and a comment is
  where instructions aimed at the model hide. Code keeps them: fenced and indented code blocks (found by
  the same CommonMark parser as the chunker's headings) and inline `code` spans. A `<!--` never closed is
  no comment: it stays, with all the text around it, as written.

Both return how many characters they dropped, for the build's notes.
"""

from __future__ import annotations

import bisect
import re

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_YAML_LINE = re.compile(r"[ \t]+\S|- |#|[\"']?[\w.\- ]+[\"']?[ \t]*:(?:[ \t]|$)")
_TOML_FRONT_MATTER = re.compile(r"\A\+\+\+[ \t]*\n(.*?\n)?\+\+\+[ \t]*(?:\n|\Z)", re.S)
_TOML_LINE = re.compile(r"[ \t]+\S|#|\[\[?[\w.\-\" ]+\]\]?[ \t]*(?:#.*)?$|[\"']?[\w.\- ]+[\"']?[ \t]*=")
_TICKS_OR_COMMENT = re.compile(r"`+|<!--")
_TICKS = re.compile(r"`+")


def strip_front_matter(text: str) -> tuple[str, int]:
    """`text` without its YAML front matter, and the number of characters removed (0: none found).

    :param text: a markdown file's text (newlines already \\n).
    """
    for block, line_re in ((_FRONT_MATTER, _YAML_LINE), (_TOML_FRONT_MATTER, _TOML_LINE)):
        m = block.match(text)
        if not m:
            continue
        lines = [line for line in (m.group(1) or "").split("\n") if line.strip()]
        if not lines or not all(line_re.match(line) for line in lines) or lines[0][0] in " \t-#":
            return text, 0
        return text[m.end():], m.end()
    return text, 0


def code_line_ranges(text: str) -> list[tuple[int, int]]:
    """The [start, end) line ranges of the fenced and indented code blocks of `text` (CommonMark)."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    return sorted(tuple(t.map) for t in tokens if t.type in ("fence", "code_block") and t.map)


def strip_comments(text: str) -> tuple[str, int]:
    """`text` without its `<!-- … -->` comments outside code, and the number of characters removed.

    :param text: a markdown or plain text file's text (newlines already \\n).
    """
    if "<!--" not in text:
        return text, 0
    lines = text.split("\n")
    out: list[str] = []
    removed = 0
    pos = 0
    for start, end in [*code_line_ranges(text), (len(lines), len(lines))]:
        if start > pos:
            prose, n = strip_prose_comments("\n".join(lines[pos:start]))
            out.append(prose)
            removed += n
        if end > start:
            out.append("\n".join(lines[start:end]))
        pos = max(pos, end)
    return "\n".join(out), removed


def strip_prose_comments(text: str) -> tuple[str, int]:
    """`text` (no code blocks) without its complete `<!-- … -->` comments; inline code spans keep theirs.

    One pass: a backtick run opens a code span closed by the next run of the same length (CommonMark). The
    runs are listed once, by length, so finding a closing run is a bisection, never a rescan: a file of
    thousands of unmatched runs stays linear (a rescan per run is quadratic: minutes on a few MB).
    """
    runs: dict[int, list[int]] = {}
    for m in _TICKS.finditer(text):
        runs.setdefault(len(m.group(0)), []).append(m.start())
    out: list[str] = []
    removed = 0
    pos = 0
    comment_ends = True  # False once a "<!--" has no "-->" after it: none later can close either
    while (m := _TICKS_OR_COMMENT.search(text, pos)) is not None:
        if m.group(0) == "<!--":
            end = text.find("-->", m.end()) if comment_ends else -1
            if end < 0:  # not a comment: shown as written (its text, and all before it, stays)
                comment_ends = False
                out.append(text[pos:m.end()])
                pos = m.end()
                continue
            out.append(text[pos:m.start()])
            removed += end + 3 - m.start()
            pos = end + 3
            continue
        same = runs[len(m.group(0))]
        i = bisect.bisect_right(same, m.start())
        stop = m.end() if i == len(same) else same[i] + len(m.group(0))
        out.append(text[pos:stop])
        pos = stop
    out.append(text[pos:])
    return "".join(out), removed
