"""What answering gives in the end (rag.answering.finalize builds it): the Answer and its Sources (every passage
given to the model, supporting ones first), with the JSON form that the CLI's `--json`, the server and the app
all use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rag.answering import grounding
from rag.answering.attribution import Support
from rag.ingest.locations import location_of, passage_label
from rag.retrieval.retriever import Hit

if TYPE_CHECKING:  # only a type here
    from rag.answering.modes.result import ChosenOption


@dataclass
class Source:
    """A passage the answer used: where it is, how well it matched, and the words that support the answer."""

    n: int
    chunk_id: int
    source: str
    section: str
    score: float
    snippet: str
    text: str
    cited: bool = True
    quote: grounding.Quote | None = None  # the verified supporting sentence, when it comes from this passage
    location: dict[str, int] = field(default_factory=dict)  # page/slide/cell (and _end) where the file has them
    label: str = ""  # "slides.pptx · slide 12 · Fine-tuning vs prompting" (rag.ingest.locations.passage_label)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; `cited` marks a supporting passage, `quote` (text, start, end: character offsets in
        the passage) the sentence quoted in the answer; `page`, `slide` or `cell` (and `page_end`...) where
        the file has them, and `label`, the passage as the CLI and the app name it."""
        return {"n": self.n, "chunk_id": self.chunk_id, "source": self.source, "section": self.section,
                **self.location, "label": self.label or passage_label(self.source, self.section, self.location),
                "score": round(self.score, 4), "snippet": self.snippet, "cited": self.cited,
                "quote": self.quote.to_dict() if self.quote else None}


@dataclass
class Answer:
    """A finished answer: its text, whether it abstained, its sources, and how it was answered.

    :param question: the question asked. `query`: what was searched for it.
    :param text: the answer shown ([n] markers kept when they name a passage given).
    :param abstained: the course does not cover the question; `sources` are then the nearest passages.
    :param sources: every passage given to the model, supporting ones first.
    :param hits: every passage retrieved, best first.
    :param supports: the answer's sentences matched to passages.
    :param timings: seconds per step. `notes`: what the user should know.
    :param answer_mode: "grounded" or "free". `quote`: the grounded answer's quote.
    :param short_answer: the answer without the quote (grounded); the whole text in free mode.
    :param choice: the option chosen when the question listed options.
    """

    question: str
    query: str
    text: str
    abstained: bool
    sources: list[Source]
    hits: list[Hit]
    supports: list[Support] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    answer_mode: str = "free"
    quote: grounding.Quote | None = None
    short_answer: str = ""  # the answer without the quote (grounded mode); the whole text in free mode
    choice: ChosenOption | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: question, answer, short_answer, answer_mode, quote, choice (label, option, index, scores),
        abstained, sources, timings, notes."""
        return {"question": self.question, "query": self.query, "answer": self.text, "short_answer": self.short_answer,
                "answer_mode": self.answer_mode, "quote": self.quote.to_dict() if self.quote else None,
                "choice": self.choice.to_dict() if self.choice else None, "abstained": self.abstained,
                "sources": [s.to_dict() for s in self.sources],
                "timings": {k: round(v, 3) for k, v in self.timings.items()}, "notes": self.notes}


def make_source(n: int, hit: Hit, snippet: str, cited: bool = True, quote: grounding.Quote | None = None) -> Source:
    """The Source of passage `n` (1-based, as numbered in the prompt) showing `snippet`."""
    return Source(n, hit.chunk.id, hit.chunk.source, hit.chunk.section, hit.scores.get("dense", hit.score),
                  snippet, hit.chunk.text, cited, quote, location_of(hit.chunk.metadata), hit.label)
