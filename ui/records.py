"""One chat message as stored in the chat history (ui/history.py): a pydantic model, checked when loaded.

The app keeps a conversation in `st.session_state.messages` as dicts (role, content, error, abstained,
notes, timings, sources as rag.answering.answer.Source, citations); this module turns one such dict into a
JSON-ready record and back. Records are validated with pydantic on the way in and out: a row that does not
fit (edited by hand, written by a newer version) is reported with its reason, never loaded half-read.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rag.answering.answer import Source
from rag.answering.grounding import Quote

ID_PATTERN = r"^[0-9a-f]{32}$"  # uuid4().hex: conversation and message ids


class QuoteRecord(BaseModel):
    """The verified supporting sentence of a source: its passage number and character span in the passage."""

    model_config = ConfigDict(extra="forbid")

    passage: int = Field(ge=1, description="1-based passage number, as numbered in the prompt")
    text: str
    start: int = Field(ge=0, description="character offset of the quote in the passage text")
    end: int = Field(ge=0, description="character offset just after the quote")
    score: float


class SourceRecord(BaseModel):
    """One source of an answer: the passage shown, where it comes from, and the words that support the answer."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=1, description="the passage's number in the prompt, as the answer's [n] markers name it")
    chunk_id: int
    source: str = Field(min_length=1, description="the file, relative to the course folder")
    section: str
    score: float
    snippet: str
    text: str
    cited: bool
    quote: QuoteRecord | None = None

    @classmethod
    def of(cls, src: Source) -> "SourceRecord":
        """The record of a pipeline Source (rag.answering.answer.Source)."""
        quote = None
        if src.quote is not None:
            q = src.quote
            quote = QuoteRecord(passage=q.passage, text=q.text, start=q.start, end=q.end, score=float(q.score))
        return cls(n=src.n, chunk_id=src.chunk_id, source=src.source, section=src.section, score=float(src.score),
                   snippet=src.snippet, text=src.text, cited=src.cited, quote=quote)

    def to_source(self) -> Source:
        """The pipeline Source this record holds (what the app's source list draws)."""
        quote = None
        if self.quote is not None:
            quote = Quote(self.quote.passage, self.quote.text, self.quote.start, self.quote.end, self.quote.score)
        return Source(self.n, self.chunk_id, self.source, self.section, self.score, self.snippet, self.text,
                      self.cited, quote)


class Citation(BaseModel):
    """An answer sentence and the passage that supports it (rag.answering.attribution.Support, without scores)."""

    model_config = ConfigDict(extra="forbid")

    sentence: str
    passage: int = Field(ge=1)


class MessageRecord(BaseModel):
    """One turn of a conversation as stored: a question, or an answer with its sources and citations."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    role: Literal["user", "assistant"]
    content: str
    error: str | None = None
    abstained: bool = False
    notes: list[str] = []
    timings: dict[str, float] = {}
    sources: list[SourceRecord] = []
    citations: list[Citation] = []


def record_of(msg: dict[str, Any]) -> MessageRecord:
    """The record of a session message (the dict the app draws), which must carry its "id".

    :param msg: the message dict ("citations" as {"sentence", "passage"} dicts).
    :returns: the validated record.
    :raises pydantic.ValidationError: a field of the wrong kind (a bug in the caller).
    """
    citations = [Citation.model_validate(c) for c in msg.get("citations", [])]
    return MessageRecord(id=msg["id"], role=msg["role"], content=msg.get("content") or "", error=msg.get("error"),
                         abstained=bool(msg.get("abstained")), notes=list(msg.get("notes", [])),
                         timings=dict(msg.get("timings") or {}),
                         sources=[SourceRecord.of(s) for s in msg.get("sources", [])], citations=citations)


def message_of(record: MessageRecord) -> dict[str, Any]:
    """The session message (dict with Source objects) a record holds: what `show_message` draws."""
    msg: dict[str, Any] = {"id": record.id, "role": record.role, "content": record.content}
    if record.error is not None:
        msg["error"] = record.error
    if record.role == "assistant":
        msg.update(abstained=record.abstained, notes=list(record.notes), timings=dict(record.timings),
                   sources=[s.to_source() for s in record.sources],
                   citations=[c.model_dump() for c in record.citations])
    return msg


def parse_record(body: str) -> MessageRecord:
    """A stored JSON body, validated.

    :raises ValueError: with a one-line reason (not JSON, a missing or mistyped field).
    """
    try:
        return MessageRecord.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "record"
        raise ValueError(f"{where}: {err['msg']}") from None
