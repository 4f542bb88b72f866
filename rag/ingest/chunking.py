"""Split Documents into Chunks that fit the embedder's window, keep their heading path and quiz items whole.

Passages fill the window: consecutive small sections are packed into one passage (their
heading lines stay in its text; `section` is the heading path where it starts) instead of one passage
per heading, which on other authors' notes gave a median of 588 characters and lost to LangChain's
1,000-character splitter. Packing raised MRR@10 by 0.03-0.05 on all four sets of
eval/retrieval_benchmark.py. The heading path is not embedded by default: embedding it lost 8 points
recall@5 on those notes and lost on three of the four sets here. With `child_tokens` the chunker
returns ~128-token child windows of each passage for small-to-big retrieval (rag/retrieval/parent_child.py).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag.ingest.loaders import LOADER_VERSION, Document
from rag.ingest.locations import LABEL_ORDINAL, SHARED_LABEL, locate, location_of, opening_words, part_regions

# A numbered quiz item at the start of a line: "**3.**", "3.", "3)", "Question 3", "Q3:".
QUESTION_START = r"\n(?=[ \t]*(?:\*\*|__)?(?:(?:Question|Q)[ \t]*\d{1,3}\b|\d{1,3}[.)](?=[ \t*_]))(?:\*\*|__)?)"
_MD_DECOR = re.compile(r"(\\?[*_`]+)|\[([^\]]*)\]\([^)]*\)")
SECTION_SEP = " > "
CHUNKER_VERSION = 4  # bump when splitting changes: indexes re-chunk every file on their next update
# 2: headings found by a CommonMark parser (code fences of any length, nested fences, fences in lists)
# 3: small sections packed into one chunk up to the budget; heading path embedded only on request
# 4: page/slide/cell locations (a chunk never spans two slides); passages sharing a label marked
MAX_SECTION_TOKENS = 48
_HEADING_LINE = re.compile(r"^ {0,3}#{1,6}([ \t]|$)")
UNIT_MARK = "\x1e"  # marks section starts for the splitter (ASCII record separator; never left in a chunk)


@dataclass
class Chunk:
    """A passage: its text, file, heading path and character span in the file's text."""

    id: int
    text: str
    source: str
    section: str
    span: tuple[int, int]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def embed_text(self) -> str:
        """What is embedded and BM25-indexed: the text, after `metadata["embed_context"]` when the chunker
        set one, else after the heading path (chunks made without a Chunker)."""
        context = self.metadata.get("embed_context", self.section)
        return f"{context}\n\n{self.text}" if context else self.text

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "source": self.source, "section": self.section,
                "span": list(self.span), "metadata": self.metadata}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Chunk":
        span = rec["span"]
        if not (isinstance(rec["id"], int) and isinstance(rec["text"], str) and isinstance(rec["source"], str)
                and isinstance(rec["section"], str) and len(span) == 2):
            raise ValueError("malformed chunk record")
        return cls(rec["id"], rec["text"], rec["source"], rec["section"], (int(span[0]), int(span[1])),
                   dict(rec.get("metadata") or {}))


def chunk_id(source: str, section: str, text: str, occurrence: int = 0) -> int:
    """Stable positive 63-bit id from source and content (FAISS ids are int64)."""
    h = hashlib.blake2b(f"{source}\0{section}\0{text}\0{occurrence}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") & 0x7FFF_FFFF_FFFF_FFFF


def clean_heading(text: str) -> str:
    """Heading text without markdown decoration (emphasis, code ticks, links)."""
    text = _MD_DECOR.sub(lambda m: m.group(2) or "", text)
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=1)
def _markdown_parser():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark")


_LINE_END = re.compile(r"\r\n?|\n")  # the line ends markdown-it counts lines by


def sections(text: str) -> Iterable[tuple[str, int, int]]:
    """(heading path, body start, body end) for each ATX-heading section, as CommonMark parses the text.

    Headings are the document's own `#` headings (not those inside block quotes or list items); a `#`
    line inside a code block is code. markdown-it-py (a CommonMark-conformant parser) finds them, because
    fences have rules a line regex got wrong: a fence closes only at a fence of the same
    character at least as long as its opener, so a ```` fence can hold a ```python block whose
    `# comment` lines are not headings; fences inside list items; unclosed fences run to the end.
    Offsets come from the parser's line map, because LangChain's MarkdownHeaderTextSplitter rewrites
    whitespace and drops the character offsets we keep as each chunk's span.

    :param text: the document text.
    :returns: (heading path joined by SECTION_SEP, start, end) character offsets into `text`, in order;
        the first section (before any heading) has the empty path.
    """
    line_starts = [0, *(m.end() for m in _LINE_END.finditer(text))]
    tokens = _markdown_parser().parse(text)
    path: list[tuple[int, str]] = []
    current, body_start = "", 0
    for i, tok in enumerate(tokens):
        if tok.type != "heading_open" or tok.level != 0 or not tok.markup.startswith("#") or not tok.map:
            continue
        first, after = tok.map
        yield current, body_start, line_starts[first]
        level = int(tok.tag[1:])
        path = [(lvl, t) for lvl, t in path if lvl < level]
        title = clean_heading(tokens[i + 1].content)
        if title:
            path.append((level, title))
        current = SECTION_SEP.join(t for _, t in path)
        body_start = line_starts[after] if after < len(line_starts) else len(text)
    yield current, body_start, len(text)


class Chunker:
    """Heading- and quiz-aware splitter sized in the embedder's tokens, with overlap."""

    def __init__(self, tokenizer: Any, max_tokens: int = 256, chunk_tokens: int = 200, overlap: int = 32,
                 merge_sections: bool = True, embed_headings: bool = False, child_tokens: int = 0,
                 ocr: bool = False):
        """
        :param tokenizer: the embedder's tokenizer (sizes are counted in its word pieces).
        :param max_tokens: the embedder's window, special tokens included.
        :param chunk_tokens: target chunk size (capped at the window).
        :param overlap: tokens repeated between consecutive pieces of one long section (whole sentences).
        :param merge_sections: pack consecutive small sections into one chunk (headings stay in its text);
            False cuts at every heading (as chunker version 2 did; kept for comparison).
        :param embed_headings: prepend the heading path to what is embedded and BM25-indexed (its room is
            taken from the chunk); the path is always kept as `Chunk.section` and shown to the model.
        :param child_tokens: when > 0 and smaller than the chunk size, `split` returns *child* windows of
            about this many tokens (whole sentences, no overlap) cut from each chunk, the *parent*: children
            are embedded and searched, the parent is what retrieval returns (small-to-big; see
            rag/retrieval/parent_child.py). Each child's metadata holds "parent" (id) and "parent_span";
            the parent's first child also holds "parent_text".
        :param ocr: the loader reads scanned PDF pages with Tesseract (rag.ingest.ocr) for this index. A
            loader option kept here because the chunker's `params()` are the recipe from file to passages
            that the manifest records: turning OCR on or off re-reads every file on the next update.
        """
        self.tokenizer = tokenizer
        self.window = max_tokens - 2  # [CLS] and [SEP]
        self.chunk_tokens = min(chunk_tokens, self.window)
        self.overlap = min(overlap, self.chunk_tokens // 2)
        self.merge_sections = merge_sections
        self.embed_headings = embed_headings
        self.child_tokens = child_tokens if 0 < child_tokens < self.chunk_tokens else 0
        self.ocr = ocr
        self._splitters: dict[tuple[int, bool], RecursiveCharacterTextSplitter] = {}
        # The splitter measures the same pieces many times while merging; memoise per chunker.
        self.count = functools.lru_cache(maxsize=65536)(self._count)

    def params(self) -> dict[str, Any]:
        return {"chunk_tokens": self.chunk_tokens, "overlap": self.overlap, "window": self.window,
                "merge_sections": self.merge_sections, "embed_headings": self.embed_headings,
                "child_tokens": self.child_tokens, "ocr": self.ocr,
                "version": CHUNKER_VERSION, "loader_version": LOADER_VERSION}

    def _count(self, text: str) -> int:
        """Length of `text` in the embedder's word pieces (no special tokens)."""
        return len(self.tokenizer.tokenize(text))

    def _splitter(self, budget: int, overlap: bool = True) -> RecursiveCharacterTextSplitter:
        if (budget, overlap) not in self._splitters:
            self._splitters[(budget, overlap)] = RecursiveCharacterTextSplitter(
                separators=[UNIT_MARK, QUESTION_START, r"\n\s*\n", r"\n", r"(?<=[.!?])\s+", r"\s+", ""],
                is_separator_regex=True,
                keep_separator="start",
                chunk_size=budget,
                chunk_overlap=min(self.overlap, budget // 2) if overlap else 0,
                length_function=self.count,
                strip_whitespace=True,
            )
        return self._splitters[(budget, overlap)]

    def _section_label(self, section: str) -> str:
        ids = self.tokenizer.tokenize(section)
        if len(ids) <= MAX_SECTION_TOKENS:
            return section
        return self.tokenizer.convert_tokens_to_string(ids[-MAX_SECTION_TOKENS:])

    def _hard_split(self, text: str, budget: int) -> list[str]:
        """Last resort for a piece the recursive splitter could not bring under the window."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        out = []
        for i in range(0, len(offsets), budget):
            part = offsets[i:i + budget]
            out.append(text[part[0][0]:part[-1][1]].strip())
        return [p for p in out if p]

    def _units(self, text: str) -> list[tuple[int, str]]:
        """(start, heading path) of each section *with its heading line*, in order; the first starts at 0."""
        units, prev_end = [], 0
        for section, _start, end in sections(text):
            units.append((prev_end, self._section_label(section) if section else ""))
            prev_end = end
        return units

    def _pieces(self, text: str, units: list[tuple[int, str]], budget: int) -> list[str]:
        """Chunk texts in reading order: small sections packed together, long ones split (never mid-sentence
        unless one sentence is longer than the budget)."""
        if not self.merge_sections:
            out = []
            for (start, _), (end, _) in zip(units, [*units[1:], (len(text), "")]):
                out.extend(self._splitter(budget).split_text(text[start:end]))
            return out
        # A unit mark before every heading line makes section boundaries the splitter's first choice of
        # cut; it merges what fits, so small sections share a chunk. Marks are removed from the pieces.
        marked = UNIT_MARK.join(text[a:b] for a, b in zip([u[0] for u in units], [*[u[0] for u in units[1:]], len(text)]))
        return [p.replace(UNIT_MARK, "").strip() for p in self._splitter(budget).split_text(marked)]

    def split(self, doc: Document) -> list[Chunk]:
        """All chunks of one document, in reading order.

        A document read in numbered parts (`doc.metadata["parts"]`: pages, slides, cells) gives each chunk
        its location (`{"slide": 3}`, `{"page": 2, "page_end": 3}`: rag.ingest.locations.locate); a chunk
        never spans two slides. Chunks of one file that share a location and heading path are marked
        `metadata[SHARED_LABEL]`, so their labels add their opening words.

        :param doc: the loaded document.
        :returns: chunks whose `span` indexes `doc.text` exactly and whose `section` is the heading path
            where the chunk starts; `embed_text` fits the embedder's window.
        """
        text = doc.text.replace(UNIT_MARK, " ")
        parts = doc.metadata.get("parts")
        regions = [(a, b, self._units(text[a:b])) for a, b in part_regions(parts, len(text))]
        budget = self.chunk_tokens
        if self.embed_headings:
            room = max((self.count(label) + 1 for *_, units in regions for _, label in units if label), default=0)
            budget = max(16, min(budget, self.window - room))
        labelled: list[tuple[tuple[int, int], str]] = []
        for a, b, units in regions:
            region = text[a:b]
            starts = [u[0] for u in units]
            for start, end in self._spans(region, units, budget):
                label = units[bisect.bisect_right(starts, start) - 1][1] if units else ""
                labelled.append(((a + start, a + end), label))
        chunks: list[Chunk] = []
        seen: dict[int, int] = {}
        for span, label in labelled:
            part = text[span[0]:span[1]]
            base = chunk_id(doc.source, label, part)
            occurrence = seen.get(base, 0)
            seen[base] = occurrence + 1
            cid = base if occurrence == 0 else chunk_id(doc.source, label, part, occurrence)
            meta: dict[str, Any] = {} if self.embed_headings else {"embed_context": ""}
            meta.update(locate(parts, *span))
            chunks.append(Chunk(cid, part, doc.source, label, span, meta))
        mark_shared_labels(chunks)
        return self._children(doc, chunks) if self.child_tokens else chunks

    def _spans(self, text: str, units: list[tuple[int, str]], budget: int) -> list[tuple[int, int]]:
        """The [start, end) spans of the chunks of `text` (sections `units`), in reading order."""
        spans: list[tuple[int, int]] = []
        cursor = 0
        for piece in self._pieces(text, units, budget):
            if not piece:
                continue
            pieces = [piece] if self.count(piece) <= budget else self._hard_split(piece, budget)
            for part in pieces:
                at = text.find(part, cursor)
                if at < 0:
                    at = text.find(part)
                at = max(at, 0)
                cursor = at + 1
                spans.append((at, at + len(part)))
        return self._attach_headings(text, spans, budget)

    def _attach_headings(self, text: str, spans: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
        """A piece that is only heading lines (its section was too long to join it) joins the next piece
        when the two fit the budget, so no passage is a bare heading."""
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(spans):
            a, b = spans[i]
            if (i + 1 < len(spans) and self.merge_sections and spans[i + 1][0] >= b
                    and all(_HEADING_LINE.match(ln) for ln in text[a:b].splitlines() if ln.strip())
                    and self.count(text[a:spans[i + 1][1]]) <= budget):
                out.append((a, spans[i + 1][1]))
                i += 2
                continue
            out.append((a, b))
            i += 1
        return out

    def _children(self, doc: Document, parents: list[Chunk]) -> list[Chunk]:
        """Child windows of each parent chunk (see `child_tokens`), in reading order."""
        children: list[Chunk] = []
        seen: dict[int, int] = {}
        for parent in parents:
            cursor = 0
            first = True
            for piece in self._splitter(self.child_tokens, overlap=False).split_text(parent.text):
                at = parent.text.find(piece, cursor)
                at = max(at, 0)
                cursor = at + 1
                start = parent.span[0] + at
                base = chunk_id(doc.source, parent.section, piece)
                occurrence = seen.get(base, 0)
                seen[base] = occurrence + 1
                cid = base if occurrence == 0 else chunk_id(doc.source, parent.section, piece, occurrence)
                meta = {**parent.metadata, "parent": parent.id, "parent_span": list(parent.span)}
                if first:
                    meta["parent_text"] = parent.text
                    first = False
                children.append(Chunk(cid, piece, doc.source, parent.section, (start, start + len(piece)), meta))
        return children


def mark_shared_labels(chunks: list[Chunk]) -> None:
    """Mark the chunks of one file that another chunk's label would not tell apart (see rag.ingest.locations).

    A chunk whose location and heading path another chunk of the file has gets `metadata[SHARED_LABEL]`
    (its label adds its opening words); when its opening words are shared too, `metadata[LABEL_ORDINAL]` is
    [k, n]: the k-th of the n such chunks in reading order (its label adds "(k of n)").

    :param chunks: one document's chunks, in reading order (changed in place).
    """
    keys = [(tuple(sorted(location_of(c.metadata).items())), c.section) for c in chunks]
    counts = Counter(keys)
    shared = [(c, (*key, opening_words(c.text))) for c, key in zip(chunks, keys) if counts[key] > 1]
    totals = Counter(key for _, key in shared)
    seen: Counter = Counter()
    for chunk, key in shared:
        chunk.metadata[SHARED_LABEL] = True
        if totals[key] > 1:
            seen[key] += 1
            chunk.metadata[LABEL_ORDINAL] = [seen[key], totals[key]]
