"""The OpenAI-compatible HTTP backend (vLLM, Ollama, llama.cpp server)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from rag.errors import GeneratorError
from rag.generation.base import GenerationParams, Generator, Messages, apply_stop

# ---------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend
# ---------------------------------------------------------------------------------------------------


class _Retry(Exception):
    """Internal: the attempt failed before any text and may be retried."""

    def __init__(self, error: GeneratorError) -> None:
        super().__init__(str(error))
        self.error = error


def _excerpt(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _error_detail(body: str) -> str:
    """The `error.message` of an OpenAI-style error body, else a short excerpt of the body."""
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return _excerpt(message)
    except (ValueError, AttributeError):
        pass
    return _excerpt(body)


class OpenAIGenerator(Generator):
    """Any OpenAI-compatible chat server (vLLM, Ollama, llama.cpp server), streamed over Server-Sent Events."""

    def __init__(
        self,
        base_url: str,
        model_name: str | None = None,
        api_key: str | None = None,
        *,
        context_window: int = 8192,
        read_timeout: float = 120.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        """`base_url` like http://127.0.0.1:11434/v1; `retries` is the total number of tries before giving up."""
        import httpx

        self.base_url = base_url.rstrip("/")
        self.url = (
            self.base_url
            if self.base_url.endswith("/chat/completions")
            else f"{self.base_url}/chat/completions"
        )
        self.model_name = model_name
        self.model_id = model_name or "default"
        self.context_window = context_window
        self.retries = max(1, retries)
        self.backoff = backoff
        self._api_key = api_key or os.environ.get("RAG_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._read_timeout = read_timeout

    def count_tokens(self, messages_or_text: Messages | str) -> int:
        """An estimate, not exact: about 4 characters per token plus 4 per message for the chat markup."""
        if isinstance(messages_or_text, str):
            return max(1, len(messages_or_text) // 4) if messages_or_text else 0
        chars = sum(len(str(m.get("content") or "")) for m in messages_or_text)
        return chars // 4 + 4 * len(messages_or_text) + 2

    def _payload(self, messages: Messages, params: GenerationParams) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model_name or "default",
            "messages": messages,
            "stream": True,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.sampling else 0.0,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop:
            payload["stop"] = params.stop
        # Not in the OpenAI API, but vLLM and llama.cpp accept them; only send them when they matter.
        if params.top_k:
            payload["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            payload["repetition_penalty"] = params.repetition_penalty
        return payload

    def _garbage(self, what: str) -> GeneratorError:
        return GeneratorError(
            f"the server at {self.base_url} answered something that is not an OpenAI chat completion: "
            f"{_excerpt(what, 120)}"
        )

    def _pieces(self, data: str) -> Iterator[str]:
        """Text in one SSE `data:` payload (a chat.completion.chunk, or a whole non-streamed completion)."""
        try:
            event = json.loads(data)
        except ValueError:
            raise self._garbage(data) from None
        if not isinstance(event, dict):
            raise self._garbage(data)
        if "error" in event and "choices" not in event:
            err = event["error"]
            message = err.get("message", err) if isinstance(err, dict) else err
            raise GeneratorError(f"the model server at {self.base_url} reported an error: {_excerpt(str(message))}")
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise self._garbage(data)
        for choice in choices[:1]:
            part = (choice.get("delta") or choice.get("message") or {}) if isinstance(choice, dict) else {}
            content = part.get("content") if isinstance(part, dict) else None
            if content:
                yield str(content)

    def _attempt(self, client: Any, payload: dict[str, Any], headers: dict[str, str]) -> Iterator[str]:
        """One request; raises _Retry for failures that happen before any text and may be retried."""
        import httpx

        started = False
        try:
            with client.stream("POST", self.url, json=payload, headers=headers) as response:
                status = response.status_code
                if status >= 400:
                    detail = _error_detail(response.read().decode("utf-8", "replace")) or response.reason_phrase
                    error = GeneratorError(f"the model server at {self.base_url} answered HTTP {status}: {detail}")
                    raise _Retry(error) if status == 429 or status >= 500 else error
                if "application/json" in response.headers.get("content-type", ""):
                    # The server ignored "stream": true and sent the whole completion at once.
                    body = response.read().decode("utf-8", "replace")
                    yield from list(self._pieces(body))
                    return
                seen_event = False
                for line in response.iter_lines():
                    line = line.strip()
                    if not line or line.startswith(":"):
                        continue  # keep-alive / comment
                    field_name, _, value = line.partition(":")
                    if field_name in ("event", "id", "retry"):
                        continue
                    if field_name != "data":
                        raise self._garbage(line)
                    value = value.strip()
                    if value == "[DONE]":
                        return
                    seen_event = True
                    for piece in self._pieces(value):
                        started = True
                        yield piece
                if not seen_event:
                    raise self._garbage("an empty stream")
        except httpx.ConnectError as e:
            reason = "connection refused" if "refused" in str(e).lower() else re.sub(r"^\[Errno -?\d+\] ", "", str(e))
            raise _Retry(
                GeneratorError(f"cannot reach the model server at {self.base_url}: {reason} — is it running?")
            ) from None
        except httpx.ConnectTimeout:
            raise _Retry(
                GeneratorError(f"cannot reach the model server at {self.base_url}: connection timed out — is it running?")
            ) from None
        except httpx.ReadTimeout:
            raise GeneratorError(
                f"the model server at {self.base_url} sent nothing for {self._read_timeout:g} s "
                "(raise the read timeout for slow models)"
            ) from None
        except httpx.HTTPError as e:
            error = GeneratorError(
                f"the connection to the model server at {self.base_url} failed"
                f"{' mid-answer' if started else ''}: {type(e).__name__}: {e}"
            )
            if started:
                raise error from None
            raise _Retry(error) from None

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        """Yield `choices[0].delta.content` pieces; retries with backoff only before the first piece."""
        params = params or GenerationParams()
        params.validate()
        return apply_stop(self._stream(messages, params), params.stop)

    def _stream(self, messages: Messages, params: GenerationParams) -> Iterator[str]:
        import httpx

        payload = self._payload(messages, params)
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        with httpx.Client(timeout=self._timeout) as client:
            for attempt in range(self.retries):
                yielded = False
                try:
                    for piece in self._attempt(client, payload, headers):
                        yielded = True
                        yield piece
                    return
                except _Retry as retry:
                    if yielded or attempt + 1 >= self.retries:
                        raise retry.error from None
                    time.sleep(self.backoff * 2**attempt)
