"""Small-to-big retrieval: search the small child windows, return the passage (parent) that holds them.

The chunker (`Chunker(child_tokens=...)`) cuts each passage of up to the embedder's window (~254
word pieces, small sections packed together) into child windows of ~128 word pieces, whole sentences.
The index embeds and BM25-indexes the children only, so building costs what it did (every token is
embedded once); a query scores the children and each passage takes the best score of its children
(max pooling, as LlamaIndex's auto-merging and LangChain's ParentDocumentRetriever do); the passage,
with its heading path, is what the model reads. Why: MiniLM was trained on short texts and a 128-piece
window is matched more sharply than a 254-piece one, while the model needs the surrounding passage;
packed passages mix topics when notes have many short sections, and the windows keep them findable by
their parts. Measured by eval/retrieval_benchmark.py (hybrid, recall@5 / MRR@10, with vs without
windows): quiz 0.655/0.403 vs 0.655/0.436, quiz-extra 0.655/0.430 vs 0.552/0.411, quiz-dup 0.621/0.397
vs 0.655/0.453, cloze 0.658/0.502 vs 0.684/0.417: mixed, level on average, at the same prompt tokens.

Indexes built without children (every chunk its own passage) go through the same code unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rag.ingest.chunking import Chunk


@dataclass
class Passages:
    """The passages of an index and which chunk (child) position belongs to which passage.

    :param passages: one Chunk per passage (its id, text, source, section, span: those of the parent).
    :param owner: passage index of each chunk position, shape (n_chunks,).
    :param members: chunk positions of each passage, in reading order.
    :param fanout: the largest number of chunks in one passage (searches go this many times deeper).
    """

    passages: list[Chunk]
    owner: np.ndarray
    members: list[list[int]]
    fanout: int = 1  # the largest number of chunks in one passage (how much deeper to search the chunks)

    @classmethod
    def of(cls, chunks: Sequence[Chunk]) -> Passages:
        """Group an index's chunks by their "parent" metadata; a chunk without one is its own passage.

        A parent whose text was not stored (an index written by something else) is shown as its first
        child's text, so a damaged record degrades to plain chunk retrieval rather than failing.
        """
        passages: list[Chunk] = []
        owner = np.empty(len(chunks), dtype=np.int64)
        members: list[list[int]] = []
        index_of: dict[tuple[str, int], int] = {}
        for pos, c in enumerate(chunks):
            pid = c.metadata.get("parent")
            if not isinstance(pid, int):
                owner[pos] = len(passages)
                passages.append(c)
                members.append([pos])
                continue
            key = (c.source, pid)
            at = index_of.get(key)
            if at is None:
                at = index_of[key] = len(passages)
                span = c.metadata.get("parent_span") or list(c.span)
                text = c.metadata.get("parent_text")
                meta = {k: v for k, v in c.metadata.items() if k not in ("parent", "parent_span", "parent_text")}
                passages.append(Chunk(pid, text if isinstance(text, str) else c.text, c.source, c.section,
                                      (int(span[0]), int(span[1])), meta))
                members.append([])
            elif isinstance(c.metadata.get("parent_text"), str) and passages[at].text == chunks[members[at][0]].text:
                passages[at].text = c.metadata["parent_text"]
            owner[pos] = at
            members[at].append(pos)
        return cls(passages, owner, members, max((len(m) for m in members), default=1))

    def best(self, ranked: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
        """Chunk-level (position, score) best first -> passage-level (passage, best child score), best first."""
        out: list[tuple[int, float]] = []
        seen: set[int] = set()
        for pos, score in ranked:
            p = int(self.owner[pos])
            if p not in seen:
                seen.add(p)
                out.append((p, score))
        return out

    def first_members(self, ranked: Sequence[tuple[int, float]]) -> dict[int, int]:
        """passage -> the chunk position that ranks it (its best child in `ranked`, chunk-level, best first)."""
        out: dict[int, int] = {}
        for pos, _ in ranked:
            out.setdefault(int(self.owner[pos]), int(pos))
        return out

    def dense_score(self, passage: int, vectors: np.ndarray, qvec: np.ndarray) -> float:
        """A passage's dense score: the best cosine of its children with the query vector."""
        return float(np.max(vectors[self.members[passage]] @ qvec))
