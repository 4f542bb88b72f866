"""[n] markers in the answer the reader sees, where a source supports it.

The pipeline attributes each answer sentence to the passage that supports it (rag.answering.attribution:
embedding similarity or verbatim overlap, independent of whether the model wrote markers) and keeps only
the model's own markers that name a real passage. This module puts a marker after every supported sentence
that has none for its passage, so the reader can follow each claim to a source whose title carries the
same number. Markers are display only: the stored answer text and the history the model sees stay as the
pipeline returned them. Nothing is inserted into code (fenced or indented blocks, inline `code`) or into a quote.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_MARKER = re.compile(r"\s?\[(\s*\d+\s*(?:[,;]\s*\d+\s*)*)\]")  # rag.answering.attribution's marker form
_END_PUNCT = re.compile(r"[.!?:;]+[\"')\]]*$")
_QUOTED = re.compile(r'"[^"\n]+"')  # a quote of the passages ("…" [n]): its own marker follows it


def _code_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges of `text` that are code: fenced and indented blocks (markdown-it), inline `code`."""
    from markdown_it import MarkdownIt

    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    ranges = [(starts[t.map[0]], starts[min(t.map[1], len(starts) - 1)])
              for t in MarkdownIt("commonmark").parse(text) if t.type in ("fence", "code_block") and t.map]
    ranges += [(m.start(), m.end()) for m in re.finditer(r"(`+)(?:(?!\1).)+?\1", text, re.S)]
    return ranges


def _plain(text: str) -> tuple[str, list[int]]:
    """`text` without its [n] markers, and for each character of it its offset in `text`."""
    plain, where, pos = [], [], 0
    for m in _MARKER.finditer(text):
        plain.append(text[pos:m.start()])
        where.extend(range(pos, m.start()))
        pos = m.end()
    plain.append(text[pos:])
    where.extend(range(pos, len(text)))
    return "".join(plain), where


def mark_citations(text: str, citations: Iterable[Mapping[str, Any]]) -> str:
    """`text` with " [n]" after each sentence that passage n supports and that no marker names n yet.

    :param text: the answer as the pipeline returned it (markers already cleaned to real passages).
    :param citations: {"sentence": answer sentence (as rag.answering.attribution.attribute split it, without
        markers), "passage": n (1-based)}.
    :returns: the text with markers added before the sentence's final punctuation ("… weights [2].");
        unchanged where a sentence cannot be found, lies in code or inside a quote (the quote's marker
        follows its closing mark), or already names its passage.
    """
    plain, where = _plain(text)
    code = _code_ranges(text) + [(m.start(), m.end()) for m in _QUOTED.finditer(text)]
    inserts: dict[int, set[int]] = {}
    cursor = 0  # citations come in the order of their sentences: a repeated sentence is found in its place
    for c in citations:
        words, n = str(c["sentence"]).split(), int(c["passage"])
        if not words:
            continue
        pattern = re.compile(r"\s+".join(map(re.escape, words)))
        m = pattern.search(plain, cursor) or pattern.search(plain)
        if m is None:
            continue
        cursor = m.end()
        punct = _END_PUNCT.search(m.group())
        end = where[m.end() - 1] + 1  # just after the sentence, in `text`
        at = where[m.start() + punct.start() - 1] + 1 if punct and punct.start() else end
        if any(a < end and at < b for a, b in code):
            continue
        named = set()
        for pos in (at, end):
            following = _MARKER.match(text, pos)
            if following:
                named |= {int(x) for x in re.findall(r"\d+", following.group(1))}
        if n not in named:
            inserts.setdefault(at, set()).add(n)
    out, pos = [], 0
    for at in sorted(inserts):
        out += [text[pos:at], " [" + ", ".join(str(n) for n in sorted(inserts[at])) + "]"]
        pos = at
    out.append(text[pos:])
    return "".join(out)
