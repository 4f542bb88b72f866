"""The `Generator` interface: `stream()` yields text pieces, `generate()` joins them; settings and stop strings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rag.errors import GeneratorError

Messages = list[dict[str, Any]]


@dataclass
class GenerationParams:
    """The generation settings the course teaches; every backend maps them onto its own knobs."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 => greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 => off
    repetition_penalty: float = 1.0
    do_sample: bool | None = None  # None => sample iff temperature > 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def sampling(self) -> bool:
        """Whether tokens are sampled (True) or picked greedily (False)."""
        return self.temperature > 0 if self.do_sample is None else self.do_sample

    def validate(self) -> None:
        """Raise GeneratorError naming the first out-of-range setting."""
        numbers = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty")
        for name in numbers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GeneratorError(f"invalid generation setting: {name} must be a number, got {value!r}")
        problems = [
            (self.max_new_tokens < 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature < 0, f"temperature must be >= 0, got {self.temperature}"),
            (not 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k < 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (self.repetition_penalty <= 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (
                self.do_sample is True and self.temperature == 0,
                "do_sample=True needs temperature > 0 (temperature 0 means greedy)",
            ),
        ]
        for bad, message in problems:
            if bad:
                raise GeneratorError(f"invalid generation setting: {message}")


class Generator(ABC):
    """A chat language model: `stream()` is the primitive, `generate()` is the joined stream."""

    model_id: str
    context_window: int

    @abstractmethod
    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        """Yield the answer to `messages` (OpenAI-style role/content dicts) piece by piece."""

    def generate(self, messages: Messages, params: GenerationParams | None = None) -> str:
        """Return the whole answer at once."""
        return "".join(self.stream(messages, params))

    def generate_batch(self, batch: list[Messages], params: GenerationParams | None = None) -> list[str]:
        """Whole answers to several conversations; backends that can run them together override this."""
        return [self.generate(m, params) for m in batch]

    @abstractmethod
    def count_tokens(self, messages_or_text: Messages | str) -> int:
        """Prompt size in model tokens (chat template applied when given messages)."""

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
