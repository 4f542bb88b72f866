"""Course text shown as rendered markdown (math, code, lists) with one span highlighted, and still unable
to load anything.

Passages and the text around them in their document are shown the way their author wrote them: markdown,
fenced code, and LaTeX math (`$…$`, `$$…$$`, which Streamlit's markdown renders with KaTeX). The supporting
quote is highlighted with Streamlit's own colour directive (`:color[…]{background="…"}`), put around each
paragraph's or list item's part of the quote, inside its list or quote marker, so no raw HTML is needed. The result goes
through ui.render.safe_markdown like every other text of a course file: images become links, raw HTML
shows as text.

Markdown cannot highlight inside a code block or a display-math block, nor a span that cuts an inline
`code` or `$math$` in two; for those `highlighted_markdown` returns None and the caller shows the escaped
HTML form (ui.render.passage_html, `<mark>`), which always highlights but renders no markdown. Why by hand:
no markdown library knows Streamlit's directive, and the span is a character range of the source text,
which renderers do not keep.
"""

from __future__ import annotations

import re

from ui.render import safe_markdown

QUOTE_COLOR = "color"  # the supporting words: dark text on the yellow of a highlighter (either theme)
PASSAGE_COLOR = "gray-background"  # a passage that supports nothing, shown in its document
COLORS = {QUOTE_COLOR: '{foreground="#262730" background="#ffe27a"}', PASSAGE_COLOR: ""}
_BLOCK_PREFIX = re.compile(r"[ \t]*(?:>[ \t]?)*[ \t]*(?:(?:[-*+]|\d{1,9}[.)])[ \t]+)?(?:#{1,6}[ \t]+)?")
_HEADING = re.compile(r"^( {0,3}(?:>[ \t]?)*)#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")


def line_starts(text: str) -> list[int]:
    """The offset where each line of `text` starts, plus len(text) + 1 at the end."""
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    return starts


def block_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges of `text` that markdown renders as a block of their own kind: fenced and indented
    code (found by markdown-it, as ui.render does) and `$$` display math (the lines between two `$$` lines)."""
    from markdown_it import MarkdownIt

    starts = line_starts(text)
    ranges = [(starts[t.map[0]], starts[min(t.map[1], len(starts) - 1)])
              for t in MarkdownIt("commonmark").parse(text) if t.type in ("fence", "code_block") and t.map]
    opened = None
    for i, line in enumerate(text.split("\n")):
        if line.strip() == "$$":
            if opened is None:
                opened = starts[i]
            else:
                ranges.append((opened, starts[i + 1]))
                opened = None
    return ranges


def _label(segment: str) -> str | None:
    """`segment` as the label of a directive (brackets escaped); None when it would break the markdown
    around it (an inline code or math span cut in two)."""
    if segment.count("`") % 2 or len(re.findall(r"(?<!\\)\$", segment)) % 2:
        return None
    label = re.sub(r"(?<!\\)([\[\]])", r"\\\1", segment)
    return label + " " if label.endswith("\\") else label


def highlighted_markdown(text: str, span: tuple[int, int] | None, color: str = QUOTE_COLOR) -> str | None:
    """`text` as safe markdown with `text[span[0]:span[1]]` on a coloured background, headings as bold lines.

    :param text: course text (a passage, or a window of its document).
    :param span: the character range to highlight; None highlights nothing.
    :param color: QUOTE_COLOR (a highlighter's yellow) or PASSAGE_COLOR (Streamlit's gray background).
    :returns: markdown for st.markdown (made safe by ui.render.safe_markdown), or None when the span cannot be
        highlighted in markdown (it touches a code or display-math block, or cuts an inline one).
    """
    out, pos = [], 0
    if span is not None:
        a, b = span
        if any(s < b and a < e for s, e in block_ranges(text)):
            return None
        groups: list[list[tuple[int, int]]] = []  # runs of line pieces that render as one stretch of text
        starts = line_starts(text)
        for ls, le in zip(starts, starts[1:]):
            le -= 1  # the line's end, before its newline
            s, e = max(a, ls), min(b, le)
            if s >= e:
                continue
            prefix = _BLOCK_PREFIX.match(text, s, e).end() - s if s == ls else 0
            s += prefix  # a list, quote or heading marker stays outside the highlight
            seg = text[s:e]
            s, e = s + len(seg) - len(seg.lstrip()), e - (len(seg) - len(seg.rstrip()))
            if s >= e:
                continue
            gap = text[groups[-1][-1][1]:ls] if groups else "\n\n"
            joined = prefix == 0 and s == ls and gap.strip() == "" and gap.count("\n") == 1
            if joined:  # a continuation line of the same paragraph: one highlight, not one per line
                groups[-1].append((s, e))
            else:
                groups.append([(s, e)])
        for group in groups:
            label = _label(" ".join(text[s:e] for s, e in group))
            if label is None:
                return None
            out += [text[pos:group[0][0]], f":{color}[{label}]" + COLORS[color]]
            pos = group[-1][1]
    out.append(text[pos:])
    return safe_markdown(headings_as_bold("".join(out)))


def headings_as_bold(text: str) -> str:
    """ATX heading lines (`## Title`) outside code as bold lines: a passage's headings are not the page's."""
    code = block_ranges(text)
    lines, starts = text.split("\n"), line_starts(text)
    for i, line in enumerate(lines):
        m = _HEADING.match(line)
        if m and m.group(2) and not any(s <= starts[i] < e for s, e in code):
            lines[i] = f"{m.group(1)}**{m.group(2)}**"
    return "\n".join(lines)
