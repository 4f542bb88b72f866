"""Split Documents into Chunks that fit the embedder's window, keep their heading path and quiz items whole."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag.ingest.loaders import LOADER_VERSION, Document

# A numbered quiz item at the start of a line: "**3.**", "3.", "3)", "Question 3", "Q3:".
QUESTION_START = r"\n(?=[ \t]*(?:\*\*|__)?(?:(?:Question|Q)[ \t]*\d{1,3}\b|\d{1,3}[.)](?=[ \t*_]))(?:\*\*|__)?)"
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_MD_DECOR = re.compile(r"(\\?[*_`]+)|\[([^\]]*)\]\([^)]*\)")
SECTION_SEP = " > "
CHUNKER_VERSION = 1  # bump when splitting changes: indexes re-chunk every file on their next update
MAX_SECTION_TOKENS = 48


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
        """What is embedded and BM25-indexed: the heading path gives the passage its topic."""
        return f"{self.section}\n\n{self.text}" if self.section else self.text

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


def sections(text: str) -> Iterable[tuple[str, int, int]]:
    """(heading path, body start, body end) for each ATX-heading section; headings in code fences ignored.

    Hand-written because LangChain's MarkdownHeaderTextSplitter rewrites whitespace and drops the
    character offsets we keep as each chunk's span.
    """
    path: list[tuple[int, str]] = []
    body_start, in_fence, pos = 0, None, 0
    current = ""
    for line in text.splitlines(keepends=True):
        fence = _FENCE.match(line)
        if fence:
            if in_fence is None:
                in_fence = fence.group(1)
            elif fence.group(1) == in_fence:
                in_fence = None
        m = None if in_fence or fence else _HEADING.match(line.rstrip("\n"))
        if m:
            yield current, body_start, pos
            level = len(m.group(1))
            path = [(lvl, t) for lvl, t in path if lvl < level]
            title = clean_heading(m.group(2))
            if title:
                path.append((level, title))
            current = SECTION_SEP.join(t for _, t in path)
            body_start = pos + len(line)
        pos += len(line)
    yield current, body_start, len(text)


class Chunker:
    """Heading- and quiz-aware splitter sized in the embedder's tokens, with overlap."""

    def __init__(self, tokenizer: Any, max_tokens: int = 256, chunk_tokens: int = 200, overlap: int = 32):
        self.tokenizer = tokenizer
        self.window = max_tokens - 2  # [CLS] and [SEP]
        self.chunk_tokens = min(chunk_tokens, self.window)
        self.overlap = min(overlap, self.chunk_tokens // 2)
        self._splitters: dict[int, RecursiveCharacterTextSplitter] = {}
        # The splitter measures the same pieces many times while merging; memoise per chunker.
        self.count = functools.lru_cache(maxsize=65536)(self._count)

    def params(self) -> dict[str, Any]:
        return {"chunk_tokens": self.chunk_tokens, "overlap": self.overlap, "window": self.window,
                "version": CHUNKER_VERSION, "loader_version": LOADER_VERSION}

    def _count(self, text: str) -> int:
        """Length of `text` in the embedder's word pieces (no special tokens)."""
        return len(self.tokenizer.tokenize(text))

    def _splitter(self, budget: int) -> RecursiveCharacterTextSplitter:
        if budget not in self._splitters:
            self._splitters[budget] = RecursiveCharacterTextSplitter(
                separators=[QUESTION_START, r"\n\s*\n", r"\n", r"(?<=[.!?])\s+", r"\s+", ""],
                is_separator_regex=True,
                keep_separator="start",
                chunk_size=budget,
                chunk_overlap=min(self.overlap, budget // 2),
                length_function=self.count,
                strip_whitespace=True,
            )
        return self._splitters[budget]

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

    def split(self, doc: Document) -> list[Chunk]:
        """All chunks of one document, in reading order."""
        chunks: list[Chunk] = []
        seen: dict[int, int] = {}
        for section, start, end in sections(doc.text):
            body = doc.text[start:end]
            if not body.strip():
                continue
            label = self._section_label(section) if section else ""
            budget = self.chunk_tokens
            if label:
                budget = max(16, min(budget, self.window - self.count(label) - 1))
            cursor = 0
            for piece in self._splitter(budget).split_text(body):
                parts = [piece] if self.count(piece) <= budget else self._hard_split(piece, budget)
                for part in parts:
                    at = body.find(part, cursor)
                    if at < 0:
                        at = body.find(part)
                    span = (start + max(at, 0), start + max(at, 0) + len(part))
                    if at >= 0:
                        cursor = at + 1
                    base = chunk_id(doc.source, label, part)
                    occurrence = seen.get(base, 0)
                    seen[base] = occurrence + 1
                    cid = base if occurrence == 0 else chunk_id(doc.source, label, part, occurrence)
                    meta = {}
                    if "page_starts" in doc.metadata:
                        meta["page"] = _page_of(doc.metadata["page_starts"], span[0])
                    chunks.append(Chunk(cid, part, doc.source, label, span, meta))
        return chunks


def _page_of(page_starts: list[int], offset: int) -> int:
    page = 1
    for i, s in enumerate(page_starts):
        if s <= offset:
            page = i + 1
    return page
