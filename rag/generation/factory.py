"""One way to name a model: `resolve_model(spec)` parses it, `get_generator(spec)` builds its backend.

Every command that takes a model goes through here — `rag ask/eval/serve --model` and `raft generate
--model` (via `rag.api.get_generator`), `raft eval --models`, `raft train --base`
(`raft.train.model.resolve_base`) and the chat app — so they accept the same specs. The parser itself
lives in `spec.py`, below the backends, so `LocalGenerator` can take a resolved spec without importing
this module (no import cycle); it is re-exported here as the public entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag.generation.base import Generator
from rag.generation.http import OpenAIGenerator
from rag.generation.local import LocalGenerator
from rag.generation.spec import ACCEPTED, KINDS, ModelSpec, resolve_model

__all__ = ["ACCEPTED", "KINDS", "ModelSpec", "get_generator", "resolve_model"]


def get_generator(
    spec: str | Path | ModelSpec | None = "bundled",
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    **kw: Any,
) -> Generator:
    """Build the backend a model spec names.

    :param spec: anything `resolve_model` accepts: "bundled", "teacher", an http(s):// URL of an
        OpenAI-compatible server, a model folder, a .gguf file, a `raft train` output folder, or a ModelSpec.
    :param model_name: the model to request from a server (http only).
    :param api_key: the server's key (http only; None or "" = none). Callers with settings pass
        `rag.api.backend_options(settings, spec)`, which holds it.
    :param kw: passed to the backend's constructor (e.g. dtype=, cache_dir=, decoder=, draft= for local;
        read_timeout=, retries= for HTTP).
    :returns: a LocalGenerator, or an OpenAIGenerator for a URL (which contacts nothing until asked).
    :raises GeneratorError: when the spec names no model (the message lists the accepted forms) or the
        local model cannot be found, converted or loaded.
    """
    resolved = resolve_model(spec, model_name=model_name)
    if resolved.kind == "http":
        assert resolved.url is not None
        return OpenAIGenerator(resolved.url, model_name=model_name, api_key=api_key, **kw)
    return LocalGenerator(resolved, **kw)
