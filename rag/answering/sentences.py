"""The sentences of a passage and what each one is: a statement worth quoting, or a heading, a slide or
section title, a list label, a question or a fragment that is not.

A quote must state something. Course passages are full of lines that match a question's words without
stating anything: slide titles ("5. Fine Tuning: Compared to Prompt Engineering"), list labels ("Pros:"),
image captions, formula lines, bold run-in headings. Each sentence of a passage is classified here from
the block it stands in and its own shape:

* the block, from a CommonMark parse (markdown-it-py, the parser the chunker already uses for headings):
  a heading (ATX or setext), code (fenced or indented; a passage cut from inside a code block, which
  starts with a bare closing fence, is read as starting in code), a table's header row or body row, an
  item of a list and how many items that list has, or a paragraph (a block quote's paragraph included;
  each line of a raw HTML block is a paragraph of its own, judged with its tags set aside);
* the logical line within the block: plain-text and slide passages put one statement on each line, so a
  line joins the previous one only when it continues it (starts lower-case after a line not ended by
  `.!?:`), as the quote candidates always did;
* the sentence itself: its last character, its words.

The kinds (`KINDS`) and how each is decided:

* ``heading``: the sentences of a heading, of a table's header row, and a sentence wholly in emphasis
  (``**Detecting motion**.``, a bold run-in heading);
* ``code``: the lines of code blocks;
* ``title``: a line that is a block by itself (a paragraph of its own, a block quote of one line, a list of
  one item, or one line of a plain-text paragraph), has no sentence-final punctuation and at most
  `TITLE_MAX_WORDS` words, and no finite verb of the closed class `_FINITE` (is, are, can, ...): a slide
  title or an image caption;
* ``question``: a sentence ending in "?": it asks, it states nothing;
* ``label``: a sentence ending in ":" of at most `LABEL_MAX_WORDS` words ("Pros:", "This can be
  formalised as follows:");
* ``fragment``: fewer than `MIN_WORDS` words of two or more letters once markup (HTML tags, entities,
  link targets, URLs) is set aside, or fewer letters-words than half its tokens (a formula, a code line,
  a bare link); or, without sentence-final punctuation, fewer than `MIN_ITEM_WORDS` words (a list item
  such as "Small upfront cost");
* ``sentence``: everything else, the only kind ever quoted.

Why by hand: no library classifies these. CommonMark parsers give the blocks (used here), sentence
splitters give sentences, but whether a line is a title, a label or a statement is a judgement about
course text that no parser makes; the rules above are that judgement, stated once.

Offsets: every unit carries its [start, end) span in the passage text, so a quote built from units (one
sentence, or two adjacent ones: `quote_spans`) is the passage's own text by construction.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection
from dataclasses import dataclass

KINDS = ("sentence", "heading", "code", "title", "question", "label", "fragment")
QUOTABLE = "sentence"
MIN_WORDS = 3  # words of two or more letters in any quotable sentence
MIN_ITEM_WORDS = 5  # ... in one without sentence-final punctuation (a list item, a table row)
TITLE_MAX_WORDS = 12  # a line standing alone, unpunctuated and verb-less, of at most this many words is a title
LABEL_MAX_WORDS = 6  # a sentence ending in ":" of at most this many words is a label
MIN_QUOTE_CHARS = 8

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9*])")
# markers a line starts with: block quote, heading hashes, bullets, numbers, bold numbers, table pipe
_LINE_MARKER = re.compile(r"^[ \t]*(?:>[ \t]?)*[ \t]*(?:#{1,6}[ \t]+|[-*+•][ \t]+|\d{1,3}[.)][ \t]+|\*\*\d{1,3}\.\*\*[ \t]+)?")
_CLOSERS = "\"'”’)]*_`»"  # what may follow a sentence's last punctuation mark
_MARKUP = re.compile(r"<[^>\n]{1,200}>|&[#\w]{1,10};|\]\([^)\s]*\)|https?://\S+")
_FENCE_LINE = re.compile(r"^[ \t]{0,3}(?:`{3,}|~{3,})[ \t]*(\S*)", re.M)  # group 1: the info string
_LINE_END = re.compile(r"\r\n?|\n")  # the line ends markdown-it counts lines by
_WORD = re.compile(r"[^\W\d_]{2,}")
_EMPHASIS_ONLY = re.compile(r"^(\*\*|__|\*|_)(?=\S)(?:(?!\1).)+(?<=\S)\1[.:!]?$")
# finite verbs of the closed class: a line holding one states something, even standing alone unpunctuated
_FINITE = frozenset("""is are was were be been being am isn't aren't wasn't weren't has have had hasn't haven't
do does did doesn't don't can cannot can't could will won't would should shall may might must""".split())


@dataclass(frozen=True)
class Unit:
    """One sentence (or list item, table row, heading line) of a passage.

    :param start: character offset of its first character in the passage.
    :param end: offset after its last character (`text` is `passage[start:end]` with whitespace collapsed).
    :param text: its words, whitespace collapsed (line markers such as "- " or "> " are outside the span).
    :param kind: one of KINDS; only "sentence" is ever quoted.
    :param line: number of its logical line in the passage (units of one line are adjacent sentences).
    :param sentences: how many sentences the span holds (2 for a pair of `quote_spans`).
    """

    start: int
    end: int
    text: str
    kind: str
    line: int
    sentences: int = 1


@functools.lru_cache(maxsize=1)
def _parser():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table")


def _line_blocks(text: str, n_lines: int) -> list[tuple[str, int, int] | None]:
    """Per line of `text`: (block kind, block id, items of its list) from the CommonMark parse, None for
    a line in no block (blank, a table's delimiter row). Block kinds: heading, code, thead, row, item,
    paragraph."""
    fences = [m.group(1) for m in _FENCE_LINE.finditer(text)]
    # a passage cut from inside a code block starts with code and a bare closing fence: read it as code
    shift = 1 if len(fences) % 2 and not fences[0] else 0
    tokens = _parser().parse("```\n" * shift + text)
    out: list[tuple[str, int, int] | None] = [None] * n_lines
    items: list[int] = []  # item count of each open list, innermost last
    block = 0

    def mark(span: list[int] | None, kind: str, siblings: int = 0) -> None:
        nonlocal block
        if not span:
            return
        block += 1
        for i in range(max(0, span[0] - shift), min(span[1] - shift, n_lines)):
            if out[i] is None or kind != "paragraph":
                out[i] = (kind, block, siblings)

    for i, tok in enumerate(tokens):
        if tok.type in ("bullet_list_open", "ordered_list_open"):
            depth, count = 0, 0
            for t in tokens[i + 1:]:
                if t.type in ("bullet_list_open", "ordered_list_open"):
                    depth += 1
                elif t.type in ("bullet_list_close", "ordered_list_close"):
                    if depth == 0:
                        break
                    depth -= 1
                elif t.type == "list_item_open" and depth == 0:
                    count += 1
            items.append(count)
        elif tok.type in ("bullet_list_close", "ordered_list_close"):
            items.pop()
        elif tok.type == "heading_open":
            mark(tok.map, "heading")
        elif tok.type in ("fence", "code_block"):
            mark(tok.map, "code")
        elif tok.type == "html_block" and tok.map:  # its lines are judged one by one, tags set aside
            for line in range(tok.map[0], tok.map[1]):
                mark([line, line + 1], "paragraph")
        elif tok.type == "tr_open":
            mark(tok.map, "thead" if tokens[i - 1].type == "thead_open" else "row")
        elif tok.type == "paragraph_open":
            mark(tok.map, "item" if items else "paragraph", items[-1] if items else 0)
    return out


def _ends(text: str) -> str:
    """The sentence's last character once closing quotes, brackets and emphasis marks are set aside."""
    stripped = text.rstrip().rstrip(_CLOSERS)
    return stripped[-1] if stripped else ""


def _kind(piece: str, block: str, siblings: int, alone: bool) -> str:
    """The kind of one sentence `piece` (whitespace collapsed) of a logical line (see the module docstring)."""
    if block in ("heading", "thead"):
        return "heading"
    if block == "code":
        return "code"
    bare = _MARKUP.sub(" ", piece)
    words = _WORD.findall(bare)
    tokens = bare.split()
    last = _ends(piece)
    punctuated = last in ".!?;…"
    if last == "?":
        return "question"
    if _EMPHASIS_ONLY.match(piece.rstrip()):
        return "heading"
    if last == ":" and len(words) <= LABEL_MAX_WORDS:
        return "label"
    if len(words) < MIN_WORDS or len(words) * 2 < len(tokens) or len(piece) < MIN_QUOTE_CHARS:
        return "fragment"
    standalone = alone and (block == "paragraph" or (block == "item" and siblings <= 1))
    if (standalone and not punctuated and last != ":" and len(words) <= TITLE_MAX_WORDS
            and not any(w.lower() in _FINITE for w in re.findall(r"[\w']+", bare))):
        return "title"
    if not punctuated and last != ":" and len(words) < MIN_ITEM_WORDS:
        return "fragment"
    return "sentence"


def passage_units(text: str) -> list[Unit]:
    """Every sentence, list item, table row and heading line of `text`, in order, with its kind.

    :param text: a passage (markdown, or plain text from a PDF or slides).
    :returns: the units; `passage[u.start:u.end]` is each one's own text (markers outside the span).
    """
    starts = [0, *(m.end() for m in _LINE_END.finditer(text))]  # lines as CommonMark counts them
    if starts[-1] == len(text) and len(starts) > 1:
        starts.pop()
    starts.append(len(text))
    raw_lines = [text[a:b] for a, b in zip(starts, starts[1:])]
    blocks = _line_blocks(text, len(raw_lines))
    # logical lines: (block, [(content start, content end), ...]) joining hard-wrapped continuations
    logical: list[tuple[tuple[str, int, int], list[tuple[int, int]]]] = []
    prev_end = ""  # last character of the previous non-blank line
    for i, ln in enumerate(raw_lines):
        info, body = blocks[i], ln.rstrip("\r\n")
        if info is None or not body.strip():
            prev_end = ""
            continue
        m_end = _LINE_MARKER.match(body).end() if info[0] not in ("code", "row", "thead") else 0
        m_end += len(body[m_end:]) - len(body[m_end:].lstrip())
        content = body[m_end:].rstrip()
        if not content or (info[0] == "heading" and not set(content) - set("=-")):
            continue  # a setext heading's underline
        span = (starts[i] + m_end, starts[i] + m_end + len(content))
        marked = bool(body[:m_end].strip())
        if (logical and logical[-1][0][1] == info[1] and not marked and prev_end and info[0] != "code"
                and content[0].islower() and prev_end not in ".!?:"):
            logical[-1][1].append(span)  # a hard-wrapped line continues its sentence
        else:
            logical.append((info, [span]))
        prev_end = content[-1]
    per_block: dict[int, int] = {}
    for info, _ in logical:
        per_block[info[1]] = per_block.get(info[1], 0) + 1
    units: list[Unit] = []
    for n, (info, spans) in enumerate(logical):
        start, end = spans[0][0], spans[-1][1]
        alone = per_block[info[1]] == 1 or info[0] == "paragraph"
        region = text[start:end]
        cuts = [0, *(m.end() for m in _SENTENCE.finditer(region)), len(region)]
        pieces = [(start + a, start + b) for a, b in zip(cuts, cuts[1:])]
        for a, b in pieces:
            chunk = text[a:b]
            a2 = a + len(chunk) - len(chunk.lstrip())
            b2 = b - (len(chunk) - len(chunk.rstrip()))
            if b2 <= a2:
                continue
            piece = " ".join(text[a2:b2].split())
            units.append(Unit(a2, b2, piece, _kind(piece, info[0], info[2], alone and len(pieces) == 1), n))
    return units


def quote_spans(text: str, *, pairs: bool = True, exclude: Collection[str] = ()) -> list[Unit]:
    """The spans of `text` a quote may be: each quotable sentence, and (with `pairs`) each two adjacent
    quotable sentences of one logical line (an answer that takes two sentences to state).

    :param text: a passage.
    :param pairs: also offer adjacent pairs (their kind is "sentence", their text both sentences').
    :param exclude: sentences never to offer, whitespace collapsed (boilerplate); a pair holding one is
        not offered either.
    :returns: units in passage order, a pair right after its first sentence; texts unique.
    """
    units = passage_units(text)
    out: list[Unit] = []
    seen: set[str] = set()
    for i, u in enumerate(units):
        if u.kind != QUOTABLE or u.text in exclude:
            continue
        if u.text not in seen:
            seen.add(u.text)
            out.append(u)
        nxt = units[i + 1] if i + 1 < len(units) else None
        if pairs and nxt is not None and nxt.line == u.line and nxt.kind == QUOTABLE and nxt.text not in exclude:
            pair = Unit(u.start, nxt.end, f"{u.text} {nxt.text}", QUOTABLE, u.line, 2)
            if pair.text not in seen:
                seen.add(pair.text)
                out.append(pair)
    return out


__all__ = ["KINDS", "QUOTABLE", "Unit", "passage_units", "quote_spans"]
