"""HTML pages to markdown-ish text: every text node a reader sees, in page order; text no reader
sees dropped by one rule and counted.

Visible text: each text node goes into the paragraph of its nearest block element (p, div, section, body,
li, td's row, ...), so text directly in a `<div>`, `<section>`, `<span>`, `<a>` or a bare `<body>` is kept
(it used to be lost: only a fixed list of block tags was read). Headings become `#` lines, list items `- `
lines, `<pre>` a fenced code block (a `# comment` in code is not a heading). `<nav>`, `<header>` and
`<footer>` are page text like any other (they used to be dropped, and with them many a page's `<h1>`).

Hidden text, dropped and counted (`dropped["hidden HTML"]`, in characters): elements with the `hidden`
attribute or `aria-hidden="true"`, an inline style with `display:none`, `visibility:hidden|collapse`,
`font-size:0` or `opacity:0` (CSS comments in the style ignored, as browsers do), and `<template>` and
`<noscript>`. No reader of the page sees such text, but
an index would show it to students and hand it to the model (an answer key, instructions aimed at the
model). `<script>`, `<style>` and `<title>` are code and metadata, not page text: dropped, not counted.
HTML comments are dropped and counted as `dropped["comments"]`. Styles from `<style>` sheets or classes
are not evaluated: only what the element itself says.
"""

from __future__ import annotations

import re
from typing import Any

_BACKTICK_RUN = re.compile(r"`{3,}")
BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hgroup", "hr", "html", "legend", "li", "main", "nav", "ol", "p", "pre", "section", "summary",
    "table", "tbody", "tfoot", "thead", "tr", "ul"})
SPACED_TAGS = frozenset({"br", "td", "th", "img", "input", "option"})  # a word break, not a paragraph
HIDDEN_TAGS = frozenset({"template", "noscript"})
NOT_TEXT_TAGS = frozenset({"script", "style", "title"})
_HIDING_STYLE = re.compile(
    r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*(?:hidden|collapse)|font-size\s*:\s*0(?:\.0*)?[a-z%]*"
    r"|opacity\s*:\s*0(?:\.0*)?%?)\s*(?:!\s*important\s*)?(?=;|$)", re.I)

_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.S)  # `color:red;/*x*/display:none` hides as well


def fence_code(code: str) -> str:
    """`code` as a CommonMark fenced block whose fence is longer than any backtick run inside it."""
    longest = max((len(m.group(0)) for m in _BACKTICK_RUN.finditer(code)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{code.strip(chr(10))}\n{fence}"


def is_hidden(tag: Any) -> bool:
    """Whether the element `tag` (a BeautifulSoup Tag) is hidden from a reader by the rule above."""
    if tag.name in HIDDEN_TAGS or "hidden" in tag.attrs:
        return True
    if str(tag.attrs.get("aria-hidden", "")).strip().lower() == "true":
        return True
    return bool(_HIDING_STYLE.search(_CSS_COMMENT.sub("", str(tag.attrs.get("style", "")))))


def drop_hidden(soup: Any) -> dict[str, int]:
    """Remove hidden elements, code and metadata, and comments, from the parsed page `soup`, in place.

    :returns: characters of text dropped, by kind: {"hidden HTML": n, "comments": n} (kinds with n > 0 only).
    """
    from bs4 import Comment

    dropped = {"hidden HTML": 0, "comments": 0}
    for tag in soup.find_all(lambda t: t.name in NOT_TEXT_TAGS or is_hidden(t)):
        if tag.decomposed:  # inside an element dropped before it
            continue
        if tag.name not in NOT_TEXT_TAGS:
            dropped["hidden HTML"] += len(" ".join(tag.get_text(" ").split()))
        tag.decompose()
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        dropped["comments"] += len(comment)
    return {kind: n for kind, n in dropped.items() if n}


def paragraph(block: Any, raw: str) -> str:
    """The markdown line(s) of the text `raw` of one block element (a heading, list item, code or paragraph)."""
    name = getattr(block, "name", None) or ""
    if name == "pre":
        return fence_code(raw) if raw.strip() else ""
    text = " ".join(raw.split())
    if not text:
        return ""
    if len(name) == 2 and name[0] == "h" and name[1].isdigit():
        return "#" * int(name[1]) + " " + text
    return "- " + text if name == "li" else text


def read_html(text: str) -> tuple[str, dict[str, int]]:
    """The visible text of an HTML page as markdown-ish paragraphs, and what was dropped.

    Iterative over the parsed tree (a deeply nested page needs no recursion).

    :param text: the page's source.
    :returns: (paragraphs joined by blank lines, characters dropped by kind: see `drop_hidden`).
    """
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(text, "html.parser")
    dropped = drop_hidden(soup)
    block_of: dict[int, Any] = {}
    paragraphs: list[str] = []
    current, parts = None, []
    for node in soup.descendants:
        if not isinstance(node, NavigableString):
            block_of[id(node)] = node if node.name in BLOCK_TAGS else block_of.get(id(node.parent), soup)
            if node.name in SPACED_TAGS:
                parts.append(" ")
            continue
        if type(node) is not NavigableString:  # a comment, doctype, CDATA or processing instruction
            continue
        block = block_of.get(id(node.parent), soup)
        if block is not current:
            paragraphs.append(paragraph(current, "".join(parts)))
            current, parts = block, []
        parts.append(str(node))
    paragraphs.append(paragraph(current, "".join(parts)))
    return "\n\n".join(p for p in paragraphs if p), dropped
