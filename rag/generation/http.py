"""The OpenAI-compatible HTTP backend (vLLM, Ollama, llama.cpp server), on the official `openai` client.

The client does the HTTP work: connection pooling, timeouts, redirects, request building. What stays here is what the client does not give: one-line `GeneratorError`s that
name the server and say what to do, for a server that is down, an HTTP error (with the server's own
`error.message`), or a reply that is not a chat completion (an HTML page, a JSON list, a stream of
something else); and acceptance of a server that ignores `"stream": true` and sends the whole completion.

Limits, settings `model_timeout`, `model_deadline`, `model_max_reply_bytes`: each try waits at
most `read_timeout` for the reply to start and between streamed pieces; one call — every try, the backoff
between them and the whole stream — ends by its `deadline` (each try's timeouts are cut to the time left,
and the stream is checked as it arrives), so a server that accepts and never answers costs the deadline,
not tries x timeout; a reply with more than `max_reply_bytes` of text (a server that ignores max_tokens, an
endless stream) is cut off. The reply's bytes are read and split into server-sent events here, each line
decoded as strict UTF-8: bytes that are not UTF-8 reject the reply (`BadReply`, reason "reply_not_utf8"),
never U+FFFD in the text or a UnicodeDecodeError. The tries are made here too (the client's own retries are
off, since they cannot see the deadline), with the client's policy: connection failures, timeouts, 408, 409,
429 and 5xx are retried before the reply has started, after the server's `Retry-After` (up to 60 s) or a
backoff of 0.5 s, 1 s, 2 s ... with jitter.

The key (the `api_key` argument: the setting api_key, RAG_API_KEY / OPENAI_API_KEY, passed down by
rag.api.backend_options; None or "" for none) goes only to the configured base URL: it is the client's bearer token for that base URL, and cross-origin redirects drop it (httpx). With
no key the Authorization header is left out altogether, as local servers expect. Nothing else the `openai`
client would read from the environment (organization, project, custom headers) is sent (`request_headers`).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rag.errors import BadReply, GeneratorError
from rag.generation.base import GenerationParams, Generator, Messages, TextStream, apply_stop

CHAT_PATH = "/chat/completions"
DEFAULT_READ_TIMEOUT = 120.0  # seconds (setting model_timeout)
DEFAULT_DEADLINE = 300.0  # seconds (setting model_deadline)
DEFAULT_MAX_REPLY_BYTES = 64 * 1024  # UTF-8 bytes of reply text (setting model_max_reply_bytes)
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is not waited for
RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx


def request_headers(key: str | None) -> dict[str, Any]:
    """Per-request headers that make the configured key the only credential sent.

    The `openai` client also reads $OPENAI_ORG_ID, $OPENAI_PROJECT_ID and $OPENAI_CUSTOM_HEADERS (which may
    hold an `Authorization` that overrides the key) and sends them with every request. Those are settings for
    api.openai.com; sent to a user's base URL they leak. Per-request headers win over the client's
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


def _is_transport_error(error: BaseException, name: str) -> bool:
    """Whether `error` is the HTTP transport's exception class `name` or a subclass (httpx, or the fork the
    `openai` client ships): the raw byte stream lets them through unwrapped."""
    return any(c.__name__ == name and c.__module__.split(".")[0].startswith("httpx") for c in type(error).__mro__)


def _retry_delay(response: Any, attempt: int) -> float | None:
    """Seconds to wait before trying again after the HTTP error `response`, or None when it is not retried.

    :param response: the httpx response of a failed try.
    :param attempt: how many tries were made so far (1 after the first).
    :returns: the server's Retry-After (-ms) when given (None above MAX_RETRY_AFTER), else 0.5 s x 2^(attempt-1)
        up to 8 s, less 0-25 % jitter; None for a status that is not retried or `x-should-retry: false`.
    """
    headers = response.headers
    should = headers.get("x-should-retry")
    if should == "false" or (should != "true" and response.status_code not in RETRY_STATUS
                             and response.status_code < 500):
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            delay = float(headers.get(header, "")) / divisor
        except ValueError:
            continue
        if delay > MAX_RETRY_AFTER:
            return None
        if delay >= 0:
            return delay
    return _backoff(attempt)


def _backoff(attempt: int) -> float:
    return min(0.5 * 2.0 ** (attempt - 1), 8.0) * (1 - 0.25 * random.random())


_EOL = re.compile(rb"\r\n|\r|\n")


def _lines(chunks: Iterable[bytes], max_line: int, too_long: Callable[[], Exception]) -> Iterator[tuple[bytes, int]]:
    """The lines of a byte stream (ending in \\n, \\r\\n or \\r) without their ends, each with its byte offset.

    Linear in the stream's length: each chunk is scanned once, whatever the lines' lengths.

    :param chunks: the stream's bytes as they arrive.
    :param max_line: the longest line accepted.
    :param too_long: the exception to raise for a longer line.
    """
    pending, offset, skip_lf = bytearray(), 0, False
    for chunk in chunks:
        start = 1 if skip_lf and chunk[:1] == b"\n" else 0  # the \n of a \r\n split over two chunks
        offset += start
        for end in _EOL.finditer(chunk, start):
            pending += chunk[start:end.start()]
            yield bytes(pending), offset
            offset += len(pending) + len(end.group())
            pending.clear()
            start = end.end()
        pending += chunk[start:]
        if len(pending) > max_line:
            raise too_long()
        skip_lf = chunk.endswith(b"\r")
    if pending:
        yield bytes(pending), offset

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
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        connect_timeout: float = 5.0,
        retries: int = 3,
        deadline: float = DEFAULT_DEADLINE,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        """A client for one server; nothing is contacted until the first answer.

        :param base_url: like http://127.0.0.1:11434/v1 (a URL ending in /chat/completions is accepted too).
        :param model_name: the model to request (None sends "default", which single-model servers ignore).
        :param api_key: the bearer token (rag.api.backend_options passes the setting api_key); None or ""
            sends none. The environment is not read here.
        :param context_window: the model's window in tokens (servers do not report it portably).
        :param read_timeout: seconds each try waits for the reply to start and between streamed pieces
            (setting model_timeout).
        :param connect_timeout: seconds to wait for the connection.
        :param retries: total tries before giving up (backoff: 0.5 s, 1 s, 2 s ... with jitter, or the
            server's Retry-After).
        :param deadline: seconds one call may take in all: tries, backoff and the whole stream (model_deadline).
        :param max_reply_bytes: the most reply text (UTF-8 bytes) one call accepts (model_max_reply_bytes).
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
        self.connect_timeout = connect_timeout
        self.deadline = deadline
        self.max_reply_bytes = max_reply_bytes
        key = api_key or None  # "" or None: no key at all (the app's choice for any server but the configured one)
        # The client insists on a key; with none, a placeholder that is never sent: each request omits the header.
        self._client = openai.OpenAI(
            base_url=root,
            api_key=key or "unused",
            max_retries=0,  # tries are made in _open, which keeps to the deadline
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

    def _too_long(self) -> BadReply:
        return BadReply(
            f"the model server at {self.base_url} sent more than {self.max_reply_bytes} bytes of text in one reply "
            "(it ignores max_tokens, or never ends): cut off; raise model_max_reply_bytes "
            "(RAG_MODEL_MAX_REPLY_BYTES) if replies this long are meant", "reply_too_long")

    def _not_utf8(self, offset: int) -> BadReply:
        return BadReply(
            f"the model server at {self.base_url} sent bytes that are not UTF-8 (near byte {offset} of the reply): "
            "the reply is rejected; check the server's model and tokenizer", "reply_not_utf8")

    def _deadline_passed(self) -> GeneratorError:
        return GeneratorError(
            f"the model server at {self.base_url} did not finish within the deadline of {self.deadline:g} s "
            "(raise model_deadline, RAG_MODEL_DEADLINE, for slow models)")

    def _checked(self, chunks: Iterable[bytes], deadline_at: float, limit: int) -> Iterator[bytes]:
        """`chunks` as they arrive, ending the call at the deadline or after `limit` bytes."""
        received = 0
        for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise self._too_long()
            if time.monotonic() > deadline_at:
                raise self._deadline_passed()
            yield chunk

    def _events(self, chunks: Iterable[bytes]) -> Iterator[Any]:
        """The JSON data of each server-sent event of a byte stream, up to `[DONE]`; lines are strict UTF-8."""
        data: list[str] = []
        for raw, offset in _lines(chunks, 8 * self.max_reply_bytes + 65536, self._too_long):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise self._not_utf8(offset + e.start) from None
            if line:
                if line.startswith(":"):
                    continue  # a comment (keep-alive)
                field, _, value = line.partition(":")
                if field == "data":
                    data.append(value[1:] if value.startswith(" ") else value)
                continue
            if not data:
                continue
            text, data = "\n".join(data), []
            if text.startswith("[DONE]"):
                return
            yield json.loads(text)
        if data and not data[0].startswith("[DONE]"):
            yield json.loads("\n".join(data))

    def _pieces(self, response: Any, deadline_at: float) -> Iterator[str]:
        """The text of a started reply: a chat.completion.chunk stream, or a whole completion as one piece.

        :raises BadReply: more than `max_reply_bytes` of text, or bytes that are not UTF-8.
        :raises GeneratorError: the deadline passed, or the reply is not a chat completion.
        """
        ctype = response.headers.get("content-type", "")
        if "text/event-stream" in ctype:
            seen, size = False, 0
            for event in self._events(self._checked(response.iter_bytes(), deadline_at, 1 << 62)):
                seen = True
                if isinstance(event, dict) and event.get("error"):  # an `error` event inside the stream
                    raise self._server_error(_error_message({"error": event["error"]}) or "an error event")
                if text := self._text(event):
                    size += self._size(text)
                    if size > self.max_reply_bytes:
                        raise self._too_long()
                    yield text
            if not seen:
                raise self._garbage("an empty stream")
            return
        # a whole body: its JSON framing and escapes may take several times the text's bytes
        body = b"".join(self._checked(response.iter_bytes(), deadline_at, 8 * self.max_reply_bytes + 65536))
        if "json" not in ctype:  # an HTML page, plain text ...: not a chat server at this URL
            raise self._garbage(f"{ctype or 'no content type'}: {body.decode('utf-8', 'replace')}")
        try:
            decoded = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._not_utf8(e.start) from None
        try:  # the server ignored "stream": true and sent the whole completion at once
            completion = json.loads(decoded)
        except ValueError:
            raise self._garbage(decoded) from None
        if not isinstance(completion, dict):
            raise self._garbage(decoded)
        if text := self._text(completion):
            if self._size(text) > self.max_reply_bytes:
                raise self._too_long()
            yield text

    def _size(self, text: str) -> int:
        """UTF-8 bytes of `text`; an escaped lone surrogate (`"\\udcff"` in the JSON) is not UTF-8 either."""
        try:
            return len(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise BadReply(
                f"the model server at {self.base_url} sent text that is not valid Unicode (a lone surrogate, "
                f"character {e.start} of a piece): the reply is rejected; check the server's model and tokenizer",
                "reply_not_utf8") from None

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> TextStream:
        """`choices[0].delta.content` pieces as the server sends them; stop strings also apply client-side.
        The request is sent on the first piece asked for; `cancel()` ends the stream before its next piece,
        `close()` closes the connection.

        :raises GeneratorError: one line naming the server, for every failure (raised while iterating);
            `BadReply` (a subclass) for a reply that is not UTF-8 or longer than `max_reply_bytes`.
        """
        params = params or GenerationParams()
        return TextStream(apply_stop(self._stream(messages, params), params.stop))

    def _open(self, request: dict[str, Any], deadline_at: float) -> Any:
        """Make the tries of one call until a reply starts; each try's timeouts are cut to the time left.

        :returns: the entered streaming-response context manager and its response.
        :raises: the last try's error (openai's exceptions), or GeneratorError at the deadline.
        """
        import openai

        attempt = 0
        while True:
            attempt += 1
            left = deadline_at - time.monotonic()
            if left <= 0:
                raise self._deadline_passed()
            timeout = openai.Timeout(min(self.read_timeout, left), connect=min(self.connect_timeout, left))
            manager = self._client.chat.completions.with_streaming_response.create(**request, timeout=timeout)
            try:
                return manager, manager.__enter__()
            except openai.APIStatusError as e:
                delay = _retry_delay(e.response, attempt)
                if delay is None or attempt >= self.retries:
                    raise
            except (openai.APITimeoutError, openai.APIConnectionError):
                if attempt >= self.retries or time.monotonic() >= deadline_at:
                    raise
                delay = _backoff(attempt)
            if time.monotonic() + delay >= deadline_at:
                raise self._deadline_passed()
            time.sleep(delay)

    def _stream(self, messages: Messages, params: GenerationParams) -> Iterator[str]:
        import openai

        started = False
        deadline_at = time.monotonic() + self.deadline
        try:
            manager, response = self._open(self._request(messages, params), deadline_at)
            try:
                for piece in self._pieces(response, deadline_at):
                    started = True
                    yield piece
            finally:
                manager.__exit__(None, None, None)
        except GeneratorError:
            raise
        except openai.APIStatusError as e:
            detail = _error_message(e.body) or e.response.reason_phrase
            raise GeneratorError(f"the model server at {self.base_url} answered HTTP {e.status_code}: {detail}") from None
        except json.JSONDecodeError as e:  # an event whose data is not JSON
            raise self._garbage(f"an event that is not JSON ({e})") from None
        except Exception as e:
            causes = list(_causes(e))
            timeout = isinstance(e, openai.APITimeoutError) or any(_is_transport_error(c, "TimeoutException")
                                                                  for c in causes)
            if timeout and any(type(c).__name__ == "ConnectTimeout" for c in causes):
                raise GeneratorError(
                    f"cannot reach the model server at {self.base_url}: connection timed out — is it running?"
                ) from None
            if timeout and time.monotonic() >= deadline_at - 0.05:  # the try's timeout was cut to the deadline
                raise self._deadline_passed() from None
            if timeout:
                raise GeneratorError(
                    f"the model server at {self.base_url} sent nothing for {self.read_timeout:g} s"
                    f"{' mid-answer' if started else ''} (raise model_timeout, RAG_MODEL_TIMEOUT, for slow models)"
                ) from None
            if isinstance(e, openai.APIConnectionError) or any(_is_transport_error(c, "HTTPError") for c in causes):
                lower = [c for c in causes if not isinstance(c, openai.OpenAIError)] or [e]
                if any(type(c).__name__ == "ConnectError" or isinstance(c, ConnectionRefusedError) for c in lower):
                    refused = any("refused" in str(c).lower() for c in lower)
                    reason = ("connection refused" if refused else
                              _excerpt(re.sub(r"\[Errno -?\d+\] ", "", str(lower[-1])), 120))
                    raise GeneratorError(
                        f"cannot reach the model server at {self.base_url}: {reason} — is it running?") from None
                raise GeneratorError(
                    f"the connection to the model server at {self.base_url} failed{' mid-answer' if started else ''}: "
                    f"{type(lower[0]).__name__}: {_excerpt(str(lower[0]), 160)}"
                ) from None
            if isinstance(e, openai.APIError):
                raise self._server_error(_error_message(e.body) or e.message) from None
            raise
