"""`rag serve`: an OpenAI-compatible /v1/chat/completions endpoint answering from the course documents.

The last user message is the question, earlier messages are the conversation; the response is a
normal chat completion (or an SSE stream of chunks) with an extra `sources` field.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rag.answering.pipeline import RagPipeline
from rag.errors import RagError
from rag.generation.base import GenerationParams


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _params(body: dict[str, Any], base: GenerationParams) -> GenerationParams:
    mapping = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens", "temperature": "temperature",
               "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repetition_penalty", "seed": "seed"}
    values = {f: getattr(base, f) for f in base.__dataclass_fields__}
    for key, field in mapping.items():
        if body.get(key) is not None:
            values[field] = body[key]
    if body.get("stop"):
        values["stop"] = [body["stop"]] if isinstance(body["stop"], str) else list(body["stop"])
    params = GenerationParams(**values)
    params.validate()
    return params


def create_app(pipeline: RagPipeline, model_name: str = "course-rag") -> FastAPI:
    """A FastAPI app serving `pipeline`; one generation at a time (a CPU model can't do two faster)."""
    app = FastAPI(title="course-rag", version="0.1")
    gate = threading.Lock()

    @app.get("/health")
    def health() -> dict[str, Any]:
        index = pipeline.retriever.index
        return {"status": "ok", "chunks": len(index), "generation": index.generation,
                "model": pipeline.generator.model_id}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "course-rag"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the request body is not JSON")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            return _error(400, "'messages' must be a non-empty list of {role, content} objects")
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            return _error(400, "no user message to answer")
        last = users[-1]
        question = messages[last]["content"]
        history = [m for m in messages[:last] if m.get("role") in ("user", "assistant")]
        try:
            params = _params(body, pipeline.params)
        except (TypeError, ValueError, RagError) as exc:
            return _error(400, f"bad generation parameter: {exc}")
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def run(stream: bool) -> Iterator[Any]:
            with gate:
                saved = pipeline.params
                pipeline.params = params
                try:
                    resp = pipeline.ask(question, history)
                    for piece in resp:
                        if stream:
                            yield piece
                    yield resp.answer()
                finally:
                    pipeline.params = saved

        if not body.get("stream"):
            try:
                answer = await _in_thread(lambda: list(run(False))[-1])
            except RagError as exc:
                return _error(400, str(exc))
            return {
                "id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "finish_reason": "stop"}],
                "usage": None,
                "sources": [s.to_dict() for s in answer.sources], "abstained": answer.abstained,
                "timings": answer.to_dict()["timings"],
            }

        def sse() -> Iterator[str]:
            def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
                obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
                return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

            yield chunk({"role": "assistant"})
            try:
                for item in run(True):
                    if isinstance(item, str):
                        yield chunk({"content": item})
                    else:
                        yield chunk({}, "stop", sources=[s.to_dict() for s in item.sources],
                                    abstained=item.abstained)
            except RagError as exc:
                yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    return app


async def _in_thread(fn):
    import anyio

    return await anyio.to_thread.run_sync(fn)
