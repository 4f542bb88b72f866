"""The `Generator` interface: `stream()` yields text pieces, `generate()` joins them; settings and stop strings.

What a backend can do is declared as class attributes (`local`, `supports_logprobs`, `supports_prefixes`,
`parallel_requests`, `small_model`), the way simonw/llm's `Model` declares `can_stream`/`supports_schema`:
callers read the attribute instead of testing the class with isinstance/hasattr, so a new backend (or a
test's scripted teacher) says what it can do in one place and every caller follows. Likewise every
`stream()` returns a `TextStream`, whose `cancel()` and `close()` every caller may use.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, model_validator

from rag.common.options import Options
from rag.errors import GeneratorError

Messages = list[dict[str, Any]]
PROMPT_FORMATS = ("chat", "raft")  # Generator.prompt_format


class GenerationCancelled(GeneratorError):
    """The model work was cancelled (its `cancel_scope` event was set) before it finished."""


_scope = threading.local()


@contextmanager
def cancel_scope(event: threading.Event | None) -> Iterator[None]:
    """Let model work started in this thread while the scope is open stop early once `event` is set.

    Why: `rag serve` must free the model within a second of a client hanging up, whatever the model is
    doing for it (streaming, scoring quote candidates, a batch); the work runs deep in the pipeline, so the
    event travels with the thread instead of through every signature. The in-process backend honours it
    within one decoder layer (raising GenerationCancelled from non-streaming calls, ending a stream early);
    backends that do not just finish their call.

    :param event: set it (from any thread) to cancel; None opens no scope.
    """
    previous = getattr(_scope, "event", None)
    _scope.event = event
    try:
        yield
    finally:
        _scope.event = previous


def current_cancel() -> threading.Event | None:
    """The event of the innermost `cancel_scope` open in this thread, if any."""
    return getattr(_scope, "event", None)


def _delegate(pieces: Iterable[str]) -> Iterator[str]:
    # `yield from` hands close() on to `pieces` when it is a generator (PEP 380): no attribute test needed
    yield from pieces


class TextStream:
    """The text pieces of one generation, with `cancel()` and `close()` for every backend.

    A backend that can stop mid-call (the in-process model: rag.generation.local.GenerationStream) stops
    its work on `cancel()`; here, the stream ends before its next piece. Either way it also ends once the
    `cancel_scope` open where the stream was made is cancelled.

    :param pieces: the pieces, in order (a generator is closed by `close()`).
    """

    def __init__(self, pieces: Iterable[str]) -> None:
        self._pieces = _delegate(pieces)
        self._cancel = threading.Event()
        self._scope = current_cancel()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        if self.cancelled:
            raise StopIteration
        return next(self._pieces)

    @property
    def cancelled(self) -> bool:
        """Whether `cancel()` was called, or the `cancel_scope` the stream was made in was cancelled."""
        return self._cancel.is_set() or (self._scope is not None and self._scope.is_set())

    def cancel(self) -> None:
        """Ask the backend to stop as soon as it can (thread-safe; also before iteration starts)."""
        self._cancel.set()

    def close(self) -> None:
        """Stop and release what the generation holds (its thread, its connection); call it from the
        iterating thread. A no-op once the stream has ended."""
        self._pieces.close()


class GenerationParams(Options):
    """The generation settings the course teaches; every backend maps them onto its own knobs.

    Checked by pydantic when made or changed (rag.common.options.Options): an out-of-range value raises
    GeneratorError, one line naming the parameter, e.g. "invalid generation setting: top_p must be in (0, 1],
    got 0". `replace(**changes)` gives a checked copy.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)
    FLAGS: ClassVar[dict[str, str]] = {name: name for name in (
        "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "do_sample", "seed", "stop")}
    ERROR_PREFIX: ClassVar[str] = "invalid generation setting: "
    error_class: ClassVar[type[GeneratorError]] = GeneratorError

    max_new_tokens: int = Field(256, ge=1, description="the most tokens an answer may have")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling: the smallest set of tokens this likely")
    top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens; 0 = off")
    repetition_penalty: float = Field(1.0, gt=0.0, description="divides the scores of tokens already written; 1 = off")
    do_sample: bool | None = Field(None, description="None = sample iff temperature > 0")
    seed: int | None = Field(None, description="seed of the sampling (None: not seeded)")
    stop: list[str] = Field(default_factory=list, description="the answer ends before the first of these strings")

    @model_validator(mode="after")
    def _sampling_needs_a_temperature(self) -> GenerationParams:
        if self.do_sample is True and self.temperature == 0:
            raise ValueError("do_sample=True needs temperature > 0 (temperature 0 means greedy)")
        return self

    @property
    def sampling(self) -> bool:
        """Whether tokens are sampled (True) or picked greedily (False)."""
        return self.temperature > 0 if self.do_sample is None else self.do_sample


class Generator(ABC):
    """A chat language model: `stream()` is the primitive, `generate()` is the joined stream.

    Subclasses set `model_id` and `context_window` and declare their capabilities as class attributes.
    """

    model_id: str
    context_window: int

    #: Runs in this process: dropping the object frees its RAM, and `tokenizer` gives exact token counts.
    local: ClassVar[bool] = False
    #: `continuation_logprobs` / `score_continuations` work: token log-probabilities of given continuations
    #: after a prompt + prefix (multiple-choice scoring in `rag eval`, guided RAFT answers).
    supports_logprobs: ClassVar[bool] = False
    #: `generate_batch(..., prefixes=...)` works: the model continues a given start of its reply (the grounded
    #: answer's quote, RAFT style). Without it a caller puts such text into the question instead.
    supports_prefixes: ClassVar[bool] = False
    #: Several threads may call it at once and gain from it (a server batches them; so does the in-process
    #: model with an ONNX decoder, which sets it per instance); plain transformers runs one at a time.
    parallel_requests: ClassVar[bool] = False
    #: Gets the short prompts and the no-model question condensing written for ~100M-parameter models.
    small_model: ClassVar[bool] = False
    #: The conversation the model was tuned on, so the pipeline asks it that way: "chat" (numbered passages
    #: with their file and heading, rag.answering.prompts.rag_messages) or "raft" (the RAFT student format:
    #: `<DOCUMENT>` blocks, then the question; the final answer after `<ANSWER>:`). A model folder declares
    #: "raft" in its PROMPT_FORMAT_FILE (`raft train` writes it into merged/); set per instance.
    prompt_format: str = "chat"

    @abstractmethod
    def stream(self, messages: Messages, params: GenerationParams | None = None) -> TextStream:
        """The answer to `messages` (OpenAI-style role/content dicts), piece by piece.

        :returns: a TextStream (iterate it; `cancel()` and `close()` stop it).
        """

    def generate(self, messages: Messages, params: GenerationParams | None = None) -> str:
        """Return the whole answer at once."""
        return "".join(self.stream(messages, params))

    def generate_batch(self, batch: list[Messages], params: GenerationParams | None = None,
                       prefixes: list[str] | None = None) -> list[str]:
        """Whole answers to several conversations; backends that can run them together override this.

        :param batch: the conversations.
        :param params: generation settings (the same for all).
        :param prefixes: one start of the assistant's reply per conversation, continued by the model (not part
            of the returned text); only for backends that declare `supports_prefixes`.
        :returns: one answer per conversation, in order.
        :raises GeneratorError: prefixes given to a backend without `supports_prefixes`.
        """
        if prefixes and any(prefixes):
            raise GeneratorError(f"{self!r} cannot continue a given start of its reply (prefixes): it does not "
                                 "declare supports_prefixes")
        return [self.generate(m, params) for m in batch]

    @abstractmethod
    def count_tokens(self, messages_or_text: Messages | str) -> int:
        """Prompt size in model tokens (chat template applied when given messages)."""

    def continuation_logprobs(self, messages: Messages, prefix: str, continuations: list[str],
                              first_tokens: int | None = None) -> list[tuple[float, int]]:
        """(summed log-probability, token count) of each continuation after the chat prompt + `prefix`.

        Backends with `supports_logprobs` override this.

        :param messages: the conversation, OpenAI-style role/content dicts.
        :param prefix: text that starts the assistant's reply before each continuation.
        :param continuations: candidate texts to score.
        :param first_tokens: score only the first n tokens of each continuation (None = all).
        :returns: one (sum of natural-log probabilities, number of tokens scored) per continuation.
        :raises GeneratorError: always here: this backend gives no token log-probabilities.
        """
        raise GeneratorError(f"{self!r} gives no token log-probabilities: scoring continuations needs an "
                             "in-process model (bundled, teacher, a model folder or a .gguf file)")

    def clear_prompt_cache(self) -> None:
        """Forget any key/value cache kept from the last prompt, so the next call reads its prompt from scratch
        (a benchmark timing cold answers). Backends that keep none do nothing."""

    def score_continuations(self, messages: Messages, prefix: str, continuations: list[str],
                            first_tokens: int | None = None) -> list[float]:
        """Mean log-probability per token of each continuation after the chat prompt + `prefix`.

        :param first_tokens: average only the first n tokens (where a choice between continuations is made).
        :returns: one mean natural-log probability per continuation.
        :raises GeneratorError: when the backend does not `supports_logprobs`.
        """
        return [total / n for total, n in self.continuation_logprobs(messages, prefix, continuations, first_tokens)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r})"


def _stop_holdback(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def apply_stop(pieces: Iterable[str], stops: list[str]) -> Iterator[str]:
    """Pass `pieces` through, ending just before the first stop string (which may span pieces)."""
    stops = [s for s in stops if s]
    if not stops:
        yield from pieces
        return
    buffer = ""
    for piece in pieces:
        buffer += piece
        hits = [i for i in (buffer.find(s) for s in stops) if i >= 0]
        if hits:
            if min(hits):
                yield buffer[: min(hits)]
            return
        keep = _stop_holdback(buffer, stops)
        if len(buffer) > keep:
            yield buffer[: len(buffer) - keep]
            buffer = buffer[len(buffer) - keep :]
    if buffer:
        yield buffer
