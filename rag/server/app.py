"""The FastAPI app behind `rag serve`: OpenAI Chat Completions over the course documents.

The last message is the question, earlier ones the conversation (system/developer messages are added
to the RAG instructions); the reply is a normal chat completion, or an SSE stream of chunks, with the
extra fields `sources`, `abstained` and `timings`. rag.server.schemas says which request fields do what,
rag.server.responses what a reply holds.

Fair under load (rag.server.queue): requests reach the model in arrival order; validation, retrieval
and abstention never wait for it; /health is answered on the event loop; at most `max_queue` requests
wait for the model and the next one gets 429 with Retry-After; a client that disconnects (streaming or
not) leaves the line, or stops its generation at the next token. Bodies over `max_body_bytes` get 413,
conversations over `max_conversation_chars` get 400. bench/load.py measures it (docs/guide/serve.md).

Closed to strangers: with an API key every endpoint wants `Authorization: Bearer <key>` (401 otherwise);
POST bodies must be `application/json` (415 otherwise: a web page cannot send that cross-site without a
CORS preflight, which fails unless its origin is allowed); CORS origins are none unless configured;
/docs and /openapi.json exist only with `docs=True`; when bound to a loopback address only loopback
Host headers are accepted (a DNS-rebinding page cannot reach the server through the visitor's browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from rag.answering.answer import Answer
from rag.answering.pipeline import RagPipeline
from rag.answering.stream import AnswerStream
from rag.errors import GeneratorError, RagError
from rag.generation.base import GenerationParams
from rag.server.queue import GenerationRun, ModelQueue, QueueFull, Ticket
from rag.server.responses import ChatCompletion, ChatCompletionChunk
from rag.server.schemas import ChatCompletionRequest, RequestError, parse_request

log = logging.getLogger("course_rag.server")

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
KEEPALIVE_S = 1.0  # a waiting stream sends an SSE comment this often (and so notices a client that left)
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streaming request checks its client is still there


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How `create_app` serves: identity, limits and access rules.

    :param model_name: the model id the API reports and requests must name.
    :param api_key: when set, every request needs `Authorization: Bearer <api_key>`.
    :param docs: serve /docs and /openapi.json.
    :param cors_origins: browser origins allowed to call the API (none by default).
    :param allowed_hosts: Host header values accepted (None: any); `rag serve` sets the loopback names
        when it listens on a loopback address.
    :param max_queue: requests that may wait for the model; one more gets 429.
    :param max_body_bytes: larger request bodies get 413.
    :param max_conversation_chars: all messages' text together; more gets 400.
    :param max_answer_tokens: the most tokens one answer may ask for (a longer request gets 400), so one
        client cannot hold the model for minutes.
    :param parallel_slots: generations at once for a backend that declares `parallel_requests`: a server
        backend, or the in-process model with an ONNX decoder (its answers share decode passes,
        rag/generation/decoder/engine.py); plain transformers gets 1.
    """

    model_name: str = "course-rag"
    api_key: str | None = None
    docs: bool = False
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] | None = None
    max_queue: int = 16
    max_body_bytes: int = 256 * 1024
    max_conversation_chars: int = 48_000
    max_answer_tokens: int = 1024
    parallel_slots: int = 4


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class Guard:
    """ASGI middleware: the API key (401) and JSON-only bodies (415) for every HTTP request."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        error = self._check(scope["method"], headers)
        if error is not None:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, method: str, headers: dict[str, bytes]) -> ApiError | None:
        if self.api_key is not None:
            scheme, _, token = headers.get("authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                return ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                                     "with the key `rag serve` was started with", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})
        if method in ("POST", "PUT", "PATCH"):
            media = headers.get("content-type", b"").split(b";")[0].strip().lower()
            if media != b"application/json":
                return ApiError(415, "the request body must be JSON sent with 'Content-Type: application/json'",
                                code="unsupported_media_type")
        return None


def request_params(req: ChatCompletionRequest, base: GenerationParams, max_answer_tokens: int) -> GenerationParams:
    """The generation settings of one request: the server's defaults overridden by the request's fields.

    :raises ApiError: 400 for an answer longer than `max_answer_tokens`.
    """
    max_new = req.answer_tokens or base.max_new_tokens
    if max_new > max_answer_tokens:
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        raise ApiError(400, f"{param}: {max_new} is more than this server allows ({max_answer_tokens})",
                       param=param, code="invalid_value")
    temperature = base.temperature if req.temperature is None else req.temperature
    top_p = base.top_p if req.top_p is None else req.top_p
    if top_p == 0:  # the smallest nucleus is the single likeliest token: greedy
        temperature, top_p = 0.0, 1.0
    stop = base.stop if req.stop is None else ([req.stop] if isinstance(req.stop, str) else list(req.stop))
    params = base.replace( max_new_tokens=max_new, temperature=temperature, top_p=top_p, stop=stop,
        seed=base.seed if req.seed is None else req.seed,
        top_k=base.top_k if req.top_k is None else req.top_k,
        repetition_penalty=base.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
        do_sample=None)
    return params


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    too_big = ApiError(413, f"the request body is larger than {limit:,} bytes: send a shorter conversation",
                       code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class ChatServing:
    """What the routes do, in one object per app (vllm's serving classes: thin routes, logic here): the
    model's fair queue, the retrieval and /health limiters, and the steps of a chat completion.

    :param pipeline: the RAG pipeline; its settings are the defaults of every request, never changed.
    :param cfg: the server's limits, key and served model name.
    """

    def __init__(self, pipeline: RagPipeline, cfg: ServerConfig) -> None:
        self.pipeline, self.cfg = pipeline, cfg
        self.slots = cfg.parallel_slots if pipeline.generator.parallel_requests else 1
        # Retrievals run one at a time in arrival order for an in-process model (they share its 2 cores); with a
        # server backend as many as it has slots, since condensing a follow-up then calls that server.
        self.retrieval = anyio.CapacityLimiter(1 if pipeline.generator.local else self.slots)
        self.health_limiter = anyio.CapacityLimiter(2)  # /health never waits behind request threads
        self._queue: ModelQueue | None = None

    def queue(self) -> ModelQueue:
        """The model's queue, created on first use, on the serving event loop."""
        if self._queue is None:
            self._queue = ModelQueue(slots=self.slots, max_waiting=self.cfg.max_queue)
        return self._queue

    async def health(self) -> dict[str, Any]:
        """The /health body: the index's size and generation, the models, the queue's figures."""
        facts = await anyio.to_thread.run_sync(self._index_facts, limiter=self.health_limiter)
        return {"status": "ok", **facts, "model": self.pipeline.generator.model_id,
                "served_model": self.cfg.model_name, "queue": self.queue().stats()}

    def _index_facts(self) -> dict[str, Any]:
        index = self.pipeline.retriever.index
        return {"chunks": len(index), "generation": index.generation}

    def model_card(self, model_id: str | None = None) -> dict[str, Any]:
        """The served model as /v1/models lists it.

        :raises ApiError: 404 when `model_id` is given and is not the served model.
        """
        if model_id is not None and model_id != self.cfg.model_name:
            raise self.unknown_model(model_id)
        return {"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "course-rag"}

    def unknown_model(self, name: str) -> ApiError:
        """The 404 of a request naming another model than the served one."""
        return ApiError(404, f"the model {name!r} does not exist here: this server serves {self.cfg.model_name!r}",
                        param="model", code="model_not_found")

    async def chat(self, request: Request) -> Any:
        """POST /v1/chat/completions: parse, take a place in line, retrieve, wait for the model, answer (a
        stream of server-sent events, or one completion).

        :raises ApiError: 400 for a bad request, 404 for another model, 413 for a body over the limit, 429 when
            the line is full, 500 when the model fails.
        """
        req, params = self.parse(await read_body(request, self.cfg.max_body_bytes))
        ticket = self.queue().reserve()  # the place in line is taken on arrival, before retrieval
        resp = await self.retrieve(req, params, ticket)
        self.wait_turn(resp, ticket)
        reply = Reply(self.cfg.model_name, req, resp)
        if req.stream:
            return StreamingResponse(reply.sse(ticket), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            answer = await until_disconnected(request, reply.complete(ticket))
        except ClientGone:
            return JSONResponse({}, status_code=499)  # nobody reads it; the model is already free
        except RagError as exc:
            raise ApiError(500, str(exc), kind="server_error") from None
        return reply.completion(answer)

    def parse(self, body: bytes) -> tuple[ChatCompletionRequest, GenerationParams]:
        """The request and its generation settings (the pipeline's, overridden by the request's).

        :raises ApiError: 400 for a malformed request or a value out of range, 404 for another model.
        """
        try:
            req = parse_request(body, max_conversation_chars=self.cfg.max_conversation_chars)
        except RequestError as exc:
            raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
        if req.model != self.cfg.model_name:
            raise self.unknown_model(req.model)
        try:
            return req, request_params(req, self.pipeline.params, self.cfg.max_answer_tokens)
        except RagError as exc:
            raise ApiError(400, str(exc), code="invalid_value") from None

    async def retrieve(self, req: ChatCompletionRequest, params: GenerationParams, ticket: Ticket) -> AnswerStream:
        """The pipeline's answer stream for `req` (its plan made: retrieval done, nothing generated yet); the
        place in line is given up when this fails.

        :raises ApiError: 400 for a question the pipeline refuses, 500 when the model fails.
        """
        try:
            return await anyio.to_thread.run_sync(
                partial(self.pipeline.ask, req.question, req.history, params=params, top_k=req.retrieval_top_k,
                        mode=req.retrieval_mode), limiter=self.retrieval)
        except RagError as exc:
            ticket.leave()
            status, kind = (500, "server_error") if isinstance(exc, GeneratorError) else (400, "invalid_request_error")
            raise ApiError(status, str(exc), kind=kind, param="messages" if status == 400 else None) from None
        except BaseException:
            ticket.leave()
            raise

    @staticmethod
    def wait_turn(resp: AnswerStream, ticket: Ticket) -> None:
        """Join the line for the model, or leave it when the answer needs no model (an abstention).

        :raises ApiError: 429 with Retry-After when the line is full.
        """
        if not resp.plan.needs_model:
            ticket.leave()  # an abstention is answered now, whatever the line
            return
        try:
            ticket.want()
        except QueueFull as exc:
            raise ApiError(429, f"the server is busy: {exc}; retry in {exc.retry_after} s",
                           kind="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(exc.retry_after)}) from None


def create_app(pipeline: RagPipeline, config: ServerConfig | str | None = None) -> FastAPI:
    """The FastAPI app serving `pipeline` (see the module docstring): middleware, error handlers and thin
    routes over a ChatServing.

    :param pipeline: the RAG pipeline; its settings are the defaults of every request, never changed.
    :param config: a ServerConfig, or just the served model name (the older signature).
    :returns: an ASGI app for uvicorn.
    """
    if config is None:
        config = ServerConfig()
    elif isinstance(config, str):
        config = ServerConfig(model_name=config)
    cfg = config
    docs = cfg.docs
    app = FastAPI(title="course-rag", version="0.1", docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None)
    serving = ChatServing(pipeline, cfg)

    # Outermost last: hosts, then CORS (answers preflights), then the key and content type.
    app.add_middleware(Guard, api_key=cfg.api_key)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    if cfg.allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(cfg.allowed_hosts))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None,
                        headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return ApiError(500, f"internal error ({type(exc).__name__}); see the server log",
                        kind="server_error").response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return await serving.health()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [serving.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        return serving.model_card(model_id)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Any:
        return await serving.chat(request)

    return app


async def until_disconnected(request: Request, work: Any) -> Any:
    """Await `work`, cancelling it (and raising ClientGone) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()


def _error_event(error: ApiError) -> str:
    return f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n"


class Reply:
    """One request's answer in the API's shapes: a whole completion, or its SSE stream."""

    def __init__(self, model_name: str, req: ChatCompletionRequest, resp: AnswerStream) -> None:
        self.model_name = model_name
        self.req = req
        self.resp = resp
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def usage(self) -> dict[str, int]:
        prompt = self.resp.plan.prompt_tokens
        completion = self.resp.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def complete(self, ticket: Ticket) -> Answer:
        """Wait for the model (if needed), generate to the end and attribute; the model is freed before attribution."""
        if not self.resp.plan.needs_model:
            return self.resp.answer()
        t0 = time.perf_counter()
        await ticket.wait()
        self.resp.timings["queue_wait"] = time.perf_counter() - t0
        run = GenerationRun(self.resp, ticket.release_threadsafe).start()
        try:
            while True:
                kind, value = await run.events.get()
                if kind == "done":
                    return value
                if kind == "error":
                    raise value
        finally:
            run.stop()  # no-op once finished; a cancelled wait (client gone) stops the model

    def completion(self, answer: Answer) -> dict[str, Any]:
        body = ChatCompletion(
            id=self.id, object="chat.completion", created=self.created, model=self.model_name,
            choices=[{"index": 0, "message": {"role": "assistant", "content": answer.text, "refusal": None,
                                              "annotations": []},
                      "logprobs": None, "finish_reason": self.resp.finish_reason}],
            usage=self.usage(), system_fingerprint=None, service_tier="default",
            sources=[s.to_dict() for s in answer.sources], abstained=answer.abstained,
            timings=answer.to_dict()["timings"])
        return body.model_dump(mode="json")

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, *, choices: bool = True,
               **extra: Any) -> str:
        with_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        fields: dict[str, Any] = {}
        if with_usage:
            fields["usage"] = None  # the reference: every chunk has "usage": null but the last
        fields.update(extra)
        chunk = ChatCompletionChunk(
            id=self.id, object="chat.completion.chunk", created=self.created, model=self.model_name,
            choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
            system_fingerprint=None, service_tier="default", **fields)
        return f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"

    async def sse(self, ticket: Ticket) -> AsyncIterator[str]:
        """The answer as Server-Sent Events: role, content pieces, the last chunk with finish_reason and
        sources, the usage chunk when asked for, then [DONE]. Errors after the start come as an error event."""
        run: GenerationRun | None = None
        waiter: asyncio.Future[None] | None = None
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            if not self.resp.plan.needs_model:
                answer = self.resp.answer()
                yield self._chunk({"content": answer.text})
            else:
                t0 = time.perf_counter()
                waiter = asyncio.ensure_future(ticket.wait())
                while not waiter.done():
                    done, _ = await asyncio.wait({waiter}, timeout=KEEPALIVE_S)
                    if not done:
                        yield f": waiting for the model, {ticket.position} ahead\n\n"
                waiter.result()
                self.resp.timings["queue_wait"] = time.perf_counter() - t0
                run = GenerationRun(self.resp, ticket.release_threadsafe).start()
                while True:
                    kind, value = await run.events.get()
                    if kind == "piece":
                        yield self._chunk({"content": value})
                    elif kind == "done":
                        answer = value
                        break
                    else:
                        raise value
            yield self._chunk({}, self.resp.finish_reason, sources=[s.to_dict() for s in answer.sources],
                              abstained=answer.abstained)
            if self.req.stream_options and self.req.stream_options.include_usage:
                yield self._chunk({}, choices=False, usage=self.usage())
        except RagError as exc:
            yield _error_event(ApiError(500, str(exc), kind="server_error"))
        except Exception as exc:  # a bug: the client still gets an error event and [DONE]
            log.exception("streaming an answer failed")
            yield _error_event(ApiError(500, f"internal error ({type(exc).__name__}); see the server log",
                                        kind="server_error"))
        finally:
            # Runs on normal end, on an error, and when the client left (Starlette cancels this generator).
            if waiter is not None and not waiter.done():
                waiter.cancel()
            if run is not None:
                run.stop()  # the run frees the model slot once the model has stopped
            else:
                ticket.leave()  # still in line, or granted but never started
        yield "data: [DONE]\n\n"
