"""The RAG loop: condense -> retrieve -> (abstain?) -> prompt -> stream -> attribute citations."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from rag.answering import prompts
from rag.answering.attribution import Support, attribute, clean_markers
from rag.errors import RagError
from rag.generation.base import GenerationParams, Generator
from rag.generation.local import LocalGenerator
from rag.retrieval.retriever import Hit, Retriever

MAX_QUESTION_CHARS = 4000
_FOLLOW_UP = re.compile(r"^\s*(and|also|but|so|what about|how about)\b|\b(it|its|they|them|their|this|that|these|those|"
                        r"he|she|the same|the other|the former|the latter)\b", re.I)


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

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "chunk_id": self.chunk_id, "source": self.source, "section": self.section,
                "score": round(self.score, 4), "snippet": self.snippet, "cited": self.cited}


@dataclass
class Answer:
    question: str
    query: str
    text: str
    abstained: bool
    sources: list[Source]
    hits: list[Hit]
    supports: list[Support] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "query": self.query, "answer": self.text, "abstained": self.abstained,
                "sources": [s.to_dict() for s in self.sources],
                "timings": {k: round(v, 3) for k, v in self.timings.items()}, "notes": self.notes}


def validate_question(question: Any) -> str:
    """Reject empty, oversized or non-text questions with a message the user can act on."""
    if not isinstance(question, str):
        raise RagError("the question must be text")
    if "\x00" in question or sum(1 for c in question if ord(c) < 32 and c not in "\n\r\t") > 0:
        raise RagError("the question contains control characters or binary data: type it as plain text")
    q = question.strip()
    if not q:
        raise RagError("the question is empty: type a question about the course")
    if len(q) > MAX_QUESTION_CHARS:
        raise RagError(f"the question is {len(q):,} characters long; keep it under {MAX_QUESTION_CHARS:,}")
    return q


class Response:
    """One answer in progress: iterate for text pieces as they stream; .answer() gives the final Answer."""

    def __init__(self, pipeline: "RagPipeline", question: str, history: Sequence[dict]):
        self.pipeline = pipeline
        self.question = validate_question(question)
        self.history = list(history)
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        t0 = time.perf_counter()
        self.query = pipeline.condense(self.question, self.history)
        self.timings["condense"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.hits = pipeline.retriever.search(self.query, pipeline.top_k, pipeline.mode)
        self.timings["retrieve"] = time.perf_counter() - t0
        self.abstained = pipeline.should_abstain(self.query, self.hits)
        self._pieces: list[str] = []
        self._done = False
        self._answer: Answer | None = None
        self._iter = self._run()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._iter)

    def _run(self) -> Iterator[str]:
        if self.abstained:
            self._pieces.append(prompts.ABSTAIN)
            self._done = True
            yield prompts.ABSTAIN
            return
        p = self.pipeline
        used_hits, messages = p.fit_prompt(self.question, self.hits, self.history)
        if len(used_hits) < len(self.hits):
            self.notes.append(f"{len(self.hits) - len(used_hits)} lower-ranked passage(s) left out to fit the "
                              f"model's context window")
        self.used_hits = used_hits
        t0 = time.perf_counter()
        first = None
        for piece in p.generator.stream(messages, p.params):
            if first is None:
                first = time.perf_counter() - t0
            self._pieces.append(piece)
            yield piece
        self.timings["first_token"] = first if first is not None else time.perf_counter() - t0
        self.timings["generate"] = time.perf_counter() - t0
        self._done = True

    def text(self) -> str:
        """The whole raw answer (streams it to the end if needed)."""
        for _ in self._iter:
            pass
        return "".join(self._pieces)

    def answer(self) -> Answer:
        """Final answer with markers cleaned and sources attributed sentence by sentence."""
        if self._answer is not None:
            return self._answer
        raw = self.text()
        p = self.pipeline
        if self.abstained:
            sources = [_source(i, h, h.chunk.text[:200], cited=False) for i, h in enumerate(self.hits, start=1)]
            self._answer = Answer(self.question, self.query, raw, True, sources, self.hits,
                                  timings=self.timings, notes=self.notes)
            return self._answer
        hits = self.used_hits
        text = clean_markers(raw, len(hits)).strip()
        t0 = time.perf_counter()
        supports = attribute(text, hits, p.retriever.embedder)
        self.timings["attribute"] = time.perf_counter() - t0
        by_passage: dict[int, list[Support]] = {}
        for s in supports:
            by_passage.setdefault(s.passage, []).append(s)
        sources = []
        for n, h in enumerate(hits, start=1):
            if n in by_passage:
                best = max(by_passage[n], key=lambda s: s.score)
                sources.append(_source(n, h, best.snippet))
        if not sources:
            self.notes.append("no answer sentence could be matched to a passage; showing the passages retrieved")
            sources = [_source(n, h, h.chunk.text[:200], cited=False) for n, h in enumerate(hits, start=1)]
        self._answer = Answer(self.question, self.query, text, False, sources, self.hits, supports,
                              self.timings, self.notes)
        return self._answer


def _source(n: int, hit: Hit, snippet: str, cited: bool = True) -> Source:
    return Source(n, hit.chunk.id, hit.chunk.source, hit.chunk.section, hit.scores.get("dense", hit.score),
                  snippet, hit.chunk.text, cited)


class RagPipeline:
    """Answers course questions from retrieved passages with a streaming generator."""

    def __init__(self, retriever: Retriever, generator: Generator, *, top_k: int = 5, mode: str | None = None,
                 params: GenerationParams | None = None, abstain_threshold: float = 0.3,
                 abstain_coverage: float = 0.9,
                 max_context_tokens: int | None = None, condense: str = "auto", small_model: bool | None = None):
        self.retriever = retriever
        self.generator = generator
        self.top_k = top_k
        self.mode = mode
        self.params = params or GenerationParams()
        self.abstain_threshold = abstain_threshold
        self.abstain_coverage = abstain_coverage
        self.max_context_tokens = max_context_tokens
        self.condense_mode = condense
        self.small_model = isinstance(generator, LocalGenerator) if small_model is None else small_model

    def should_abstain(self, query: str, hits: list[Hit]) -> bool:
        """Abstain when the best passage is far from the question (dense cosine) and the question's
        rarer words are not in the course either (the embedder misses jargon such as "PEFT")."""
        best = max((h.scores.get("dense", h.score) for h in hits), default=-1.0)
        if best >= self.abstain_threshold:
            return False
        return not hits or self.retriever.index.bm25.term_coverage(query) < self.abstain_coverage

    def ask(self, question: str, history: Sequence[dict] = ()) -> Response:
        """Start answering: retrieval happens now, generation as the Response is iterated."""
        return Response(self, question, history)

    def condense(self, question: str, history: Sequence[dict]) -> str:
        """A standalone retrieval query for a follow-up question, using the conversation so far."""
        previous = [m["content"] for m in history if m.get("role") == "user" and m.get("content")]
        if not previous or self.condense_mode == "off":
            return question
        mode = self.condense_mode
        if mode == "auto":
            mode = "concat" if self.small_model else "llm"
        if mode == "llm":
            try:
                q = self.generator.generate(prompts.condense_messages(question, history),
                                            GenerationParams(max_new_tokens=64, temperature=0.0))
                q = q.strip().splitlines()[0].strip() if q.strip() else ""
                if 3 <= len(q) <= 500:
                    return q
            except RagError:
                pass
        # A follow-up that leans on the conversation ("and how does it compare...") borrows the previous
        # question's words for retrieval; a self-contained question is searched as it is.
        if _FOLLOW_UP.search(question):
            return f"{previous[-1]} {question}"
        return question

    def fit_prompt(self, question: str, hits: list[Hit], history: Sequence[dict]) -> tuple[list[Hit], list[dict]]:
        """Drop the lowest-ranked passages until prompt + answer fit the model's window (and passage budget)."""
        window = self.generator.context_window - self.params.max_new_tokens
        budget = min(window, self.max_context_tokens) if self.max_context_tokens else window
        hist = list(history)[-6:]
        used = list(hits)
        while True:
            messages = prompts.rag_messages(question, used, self.small_model, hist)
            if self.generator.count_tokens(messages) <= budget or len(used) <= 1:
                break
            used = used[:-1]
        if self.generator.count_tokens(messages) > window and hist:
            hist = []
            messages = prompts.rag_messages(question, used, self.small_model, hist)
        if self.generator.count_tokens(messages) > window:
            raise RagError("the question and the best passage do not fit the model's context window: "
                           "ask a shorter question or lower --max-tokens")
        return used, messages
