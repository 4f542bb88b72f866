"""Pydantic models of the OpenAI Chat Completions response, as `rag serve` sends it.

The reference's fields come first in each model and are always sent (null where the server has nothing,
e.g. `logprobs`, `system_fingerprint`); the extensions (`sources`, `abstained`, `timings`; `sources` and
`abstained` on the last streamed chunk) follow. A source's JSON is defined once, by
`rag.answering.answer.Source.to_dict` (the CLI's `--json` prints the same), not mirrored here. Chunks are
dumped with exclude_unset, so a chunk carries only the fields given (`usage` only when the request asked for `stream_options.include_usage`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    annotations: list[dict[str, Any]]


class Choice(BaseModel):
    index: int
    message: AssistantOut
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    """The non-streamed response (reference fields, then the extensions)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None
    service_tier: str | None
    sources: list[dict[str, Any]] = []  # rag.answering.answer.Source.to_dict(), its one definition
    abstained: bool = False
    timings: dict[str, float] = {}


class Delta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(BaseModel):
    """One SSE event of a streamed response; dumped with exclude_unset, so only fields given are sent."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str | None
    service_tier: str | None
    usage: Usage | None = None
    sources: list[dict[str, Any]] | None = None  # as ChatCompletion.sources
    abstained: bool | None = None
