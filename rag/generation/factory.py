"""One place that turns a model spec into a backend."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rag.errors import GeneratorError
from rag.generation.base import Generator
from rag.generation.http import OpenAIGenerator
from rag.generation.local import LocalGenerator

# ---------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------


def get_generator(
    spec: str = "bundled", *, model_name: str | None = None, api_key: str | None = None, **kw: Any
) -> Generator:
    """Build a backend from a config string: "bundled", "teacher", a local model folder / .gguf file, or an http(s) URL.

    Extra keywords go to the backend's constructor (e.g. dtype= for local, read_timeout= for HTTP).
    """
    from rag.generation.teacher import (
        is_teacher_spec,  # lazy: rag.teacher imports this module
    )

    spec = (spec or "bundled").strip()
    if spec.lower() == "bundled":
        return LocalGenerator("bundled", **kw)
    if is_teacher_spec(spec):  # "teacher" / "qwen2.5-coder-0.5b": the optional offline RAFT teacher
        return LocalGenerator("teacher", **kw)
    if re.match(r"https?://", spec, re.IGNORECASE):
        return OpenAIGenerator(spec, model_name=model_name, api_key=api_key, **kw)
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf"):
        return LocalGenerator(path, **kw)
    raise GeneratorError(
        f"unknown model {spec!r}: use \"bundled\", \"teacher\", an http(s):// URL of an OpenAI-compatible "
        "server, or an existing model folder"
    )
