"""The OpenAI-compatible HTTP backend (vLLM, Ollama, llama.cpp server), on the official `openai` client.

The client does the HTTP work that was hand-written here before: connection pooling, Server-Sent Events
parsing, timeouts, and retries with exponential backoff and jitter that honour `Retry-After` (it retries
connection failures, timeouts, 408, 409, 429 and 5xx, and only before the reply has started, so text is
never yielded twice). What stays here is what the client does not give: one-line `GeneratorError`s that
name the server and say what to do, for a server that is down, an HTTP error (with the server's own
`error.message`), or a reply that is not a chat completion (an HTML page, a JSON list, a stream of
something else); and acceptance of a server that ignores `"stream": true` and sends the whole completion.

The key ($RAG_API_KEY, then $OPENAI_API_KEY, unless given; "" for none) goes only to the configured base
URL: it is the client's bearer token for that base URL, and cross-origin redirects drop it (httpx). With
no key the Authorization header is left out altogether, as local servers expect. Nothing else the `openai`
client would read from the environment (organization, project, custom headers) is sent (`request_headers`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

from rag.errors import GeneratorError
from rag.generation.base import GenerationParams, Generator, Messages, apply_stop

CHAT_PATH = "/chat/completions"


def request_headers(key: str | None) -> dict[str, Any]:
    """Per-request headers that make the configured key the only credential sent.

    The `openai` client also reads $OPENAI_ORG_ID, $OPENAI_PROJECT_ID and $OPENAI_CUSTOM_HEADERS (which may
    hold an `Authorization` that overrides the key) and sends them with every request. Those are settings for
    api.openai.com; sent to a user's base URL they leak (issue 12). Per-request headers win over the client's
    own, and `openai.Omit()` removes a header.

    :param key: the bearer token for the configured base URL; None or "" sends no Authorization header.
    :returns: the `extra_headers` of every `chat.completions.create` call.
    """
    import openai

    ambient = os.environ.get("OPENAI_CUSTOM_HEADERS", "")
    names = {line.split(":", 1)[0].strip() for line in ambient.splitlines() if ":" in line}
    headers: dict[str, Any] = {name: openai.Omit() for name in names if name}
    headers.update({"OpenAI-Organization": openai.Omit(), "OpenAI-Project": openai.Omit()})
    headers["Authorization"] = f"Bearer {key}" if key else openai.Omit()
    return headers


def _excerpt(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _field(obj: Any, name: str) -> Any:
    """`obj[name]` for a dict, `obj.name` for a parsed model (None when absent): replies are not validated."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and the exceptions it was raised from (the transport's errors under the client's)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _raw(event: Any) -> str:
    """JSON text of a reply event as received (a parsed chunk keeps unknown fields), for error messages."""
    import openai

    if isinstance(event, openai.BaseModel):
        event = event.to_dict(warnings=False)  # no serializer warnings for the odd fields being reported
    try:
        return json.dumps(event, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(event)


def _error_message(body: Any) -> str:
    """The `error.message` of an OpenAI-style error body (already unwrapped by the client), else the body."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if isinstance(message, str) and message:
            return _excerpt(message)
        return _excerpt(json.dumps(body, ensure_ascii=False))
    return _excerpt(str(body)) if body else ""


class OpenAIGenerator(Generator):
    """Any OpenAI-compatible chat server (vLLM, Ollama, llama.cpp server), streamed through the `openai` client."""

    local = False
    supports_logprobs = False  # servers differ on logprobs; no portable continuation scoring
    parallel_requests = True  # a server batches concurrent requests
    small_model = False

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
    ) -> None:
        """A client for one server; nothing is contacted until the first answer.

        :param base_url: like http://127.0.0.1:11434/v1 (a URL ending in /chat/completions is accepted too).
        :param model_name: the model to request (None sends "default", which single-model servers ignore).
        :param api_key: the bearer token; default $RAG_API_KEY, then $OPENAI_API_KEY, else none is sent;
            "" sends none whatever the environment holds.
        :param context_window: the model's window in tokens (servers do not report it portably).
        :param read_timeout: seconds to wait for the reply to start and between streamed pieces.
        :param connect_timeout: seconds to wait for the connection.
        :param retries: total tries before giving up (the client's backoff: 0.5 s, 1 s, 2 s ... with jitter,
            or the server's Retry-After).
        """
        import openai

        self.base_url = base_url.strip().rstrip("/")
        root = self.base_url.removesuffix(CHAT_PATH)
        self.url = root + CHAT_PATH
        self.model_name = model_name
        self.model_id = model_name or "default"
        self.context_window = context_window
        self.retries = max(1, retries)
        self.read_timeout = read_timeout
        # "" means no key at all (the app asks for that for any server but the configured one, issue 12).
        key = api_key if api_key is not None else (os.environ.get("RAG_API_KEY") or os.environ.get("OPENAI_API_KEY"))
        # The client insists on a key; with none, a placeholder that is never sent: each request omits the header.
        self._client = openai.OpenAI(
            base_url=root,
            api_key=key or "unused",
            max_retries=self.retries - 1,
            timeout=openai.Timeout(read_timeout, connect=connect_timeout),
        )
        self._headers = request_headers(key)

    def count_tokens(self, messages_or_text: Messages | str) -> int:
        """An estimate, not exact: about 4 characters per token plus 4 per message for the chat markup."""
        if isinstance(messages_or_text, str):
            return max(1, len(messages_or_text) // 4) if messages_or_text else 0
        chars = sum(len(str(m.get("content") or "")) for m in messages_or_text)
        return chars // 4 + 4 * len(messages_or_text) + 2

    def _request(self, messages: Messages, params: GenerationParams) -> dict[str, Any]:
        """Keyword arguments of `chat.completions.create` for one streamed answer."""
        request: dict[str, Any] = {
            "model": self.model_name or "default",
            "messages": messages,
            "stream": True,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.sampling else 0.0,
            "top_p": params.top_p,
        }
        request["extra_headers"] = self._headers
        if params.seed is not None:
            request["seed"] = params.seed
        if params.stop:
            request["stop"] = params.stop
        # Not in the OpenAI API, but vLLM and llama.cpp accept them; only sent when they matter.
        extra = {"top_k": params.top_k} if params.top_k else {}
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        if extra:
            request["extra_body"] = extra
        return request

    def _garbage(self, what: str) -> GeneratorError:
        return GeneratorError(
            f"the server at {self.base_url} answered something that is not an OpenAI chat completion: "
            f"{_excerpt(what, 120)}"
        )

    def _server_error(self, message: Any) -> GeneratorError:
        return GeneratorError(f"the model server at {self.base_url} reported an error: {_excerpt(str(message))}")

    def _text(self, event: Any) -> str:
        """The text of one chunk (`choices[0].delta.content`) or of a whole completion (`.message.content`)."""
        choices = _field(event, "choices")
        if not isinstance(choices, list):
            error = _field(event, "error")
            if error:
                raise self._server_error(_field(error, "message") or error)
            raise self._garbage(_raw(event))
        if not choices:
            return ""
        part = _field(choices[0], "delta") or _field(choices[0], "message")
        content = _field(part, "content") if part is not None else None
        return content if isinstance(content, str) else ""

    def _pieces(self, response: Any) -> Iterator[str]:
        """The text of a started reply: a chat.completion.chunk stream, or a whole completion as one piece."""
        ctype = response.headers.get("content-type", "")
        if "text/event-stream" in ctype:
            seen = False
            for chunk in response.parse():
                seen = True
                if text := self._text(chunk):
                    yield text
            if not seen:
                raise self._garbage("an empty stream")
            return
        body = response.text()
        if "json" not in ctype:  # an HTML page, plain text ...: not a chat server at this URL
            raise self._garbage(f"{ctype or 'no content type'}: {body}")
        try:  # the server ignored "stream": true and sent the whole completion at once
            completion = json.loads(body)
        except ValueError:
            raise self._garbage(body) from None
        if not isinstance(completion, dict):
            raise self._garbage(body)
        if text := self._text(completion):
            yield text

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        """Yield `choices[0].delta.content` pieces as the server sends them; stop strings also apply client-side.

        :raises GeneratorError: one line naming the server, for every failure (raised while iterating).
        """
        params = params or GenerationParams()
        params.validate()
        return apply_stop(self._stream(messages, params), params.stop)

    def _stream(self, messages: Messages, params: GenerationParams) -> Iterator[str]:
        import httpx
        import openai

        started = False
        try:
            create = self._client.chat.completions.with_streaming_response.create
            with create(**self._request(messages, params)) as response:  # retries happen in here
                for piece in self._pieces(response):
                    started = True
                    yield piece
        except openai.APIStatusError as e:
            detail = _error_message(e.body) or e.response.reason_phrase
            raise GeneratorError(f"the model server at {self.base_url} answered HTTP {e.status_code}: {detail}") from None
        # While streaming, openai<3 lets the transport's own httpx errors through; later versions wrap them.
        except (openai.APITimeoutError, httpx.TimeoutException) as e:
            if any(type(c).__name__ == "ConnectTimeout" for c in _causes(e)):
                raise GeneratorError(
                    f"cannot reach the model server at {self.base_url}: connection timed out — is it running?"
                ) from None
            raise GeneratorError(
                f"the model server at {self.base_url} sent nothing for {self.read_timeout:g} s"
                f"{' mid-answer' if started else ''} (raise the read timeout for slow models)"
            ) from None
        except (openai.APIConnectionError, httpx.HTTPError) as e:
            causes = [c for c in _causes(e) if not isinstance(c, openai.OpenAIError)] or [e]
            if any(type(c).__name__ == "ConnectError" or isinstance(c, ConnectionRefusedError) for c in causes):
                refused = any("refused" in str(c).lower() for c in causes)
                reason = "connection refused" if refused else _excerpt(re.sub(r"\[Errno -?\d+\] ", "", str(causes[-1])), 120)
                raise GeneratorError(f"cannot reach the model server at {self.base_url}: {reason} — is it running?") from None
            raise GeneratorError(
                f"the connection to the model server at {self.base_url} failed{' mid-answer' if started else ''}: "
                f"{type(causes[0]).__name__}: {_excerpt(str(causes[0]), 160)}"
            ) from None
        except openai.APIError as e:  # an `error` event inside the stream
            raise self._server_error(_error_message(e.body) or e.message) from None
        except json.JSONDecodeError as e:  # an event whose data is not JSON
            raise self._garbage(f"an event that is not JSON ({e})") from None
