"""A LoRA adapter as a model: merged once into its base model in the model cache, then loaded like any folder.

Why: an adapter is a few MB (the course's RAFT adapter: 2.4 M parameters, r 8) where a merged model is 540 MB,
so the project ships the adapter of its own course (`COURSE_ADAPTER`) and `raft train` writes one
beside its merged/ model. peft does the merge (`PeftModel.from_pretrained(base, folder).merge_and_unload()`,
the same call `raft train` uses for merged/); the merged folder is written once through `publish_cached` (a
temp folder renamed into place) under a name keyed by the adapter's bytes and the base folder, so every later
load, and the ONNX decoder built for it, sees a plain model folder.

An adapter folder holds peft's `adapter_config.json` + `adapter_model.safetensors` and `ADAPTER_INFO`
(`rag_adapter.json`): the base model's spec (peft records the path of the machine that trained it, which is
not portable), the prompt format the model was tuned on, and the SHA-256 of each file of the course it was
tuned on (`course_files`), which decides where the shipped adapter is the default (`course_share`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import GeneratorError
from rag.generation.base import PROMPT_FORMATS
from rag.generation.models import PROMPT_FORMAT_FILE, default_cache_dir, is_valid_model_cache, publish_cached

ADAPTER_INFO = "rag_adapter.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
#: The RAFT adapter of the shipped course (docs/results/raft.md), applied to the bundled base.
COURSE_ADAPTER = Path(__file__).resolve().parent / "course_adapter"
#: The shipped adapter is the default model when at least this share of the indexed files are its course's.
COURSE_SHARE = 0.5


@dataclass(frozen=True)
class AdapterInfo:
    """What `ADAPTER_INFO` says about an adapter.

    :param base: the base model's spec ("bundled", "teacher", a folder or .gguf path), parsed by resolve_model.
    :param prompt_format: the conversation it was tuned on (rag.generation.base.PROMPT_FORMATS).
    :param course_files: file name -> SHA-256 hex of the course it was tuned on ({} when not recorded).
    :param extra: every other key (method, training command, evaluation), kept for the record.
    """

    base: str
    prompt_format: str = "raft"
    course_files: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


def is_adapter_folder(path: Path) -> bool:
    """Whether `path` is an adapter folder this module loads (peft's config and our ADAPTER_INFO)."""
    return (path / PEFT_CONFIG).is_file() and (path / ADAPTER_INFO).is_file()


def read_adapter_info(folder: Path) -> AdapterInfo:
    """The validated `ADAPTER_INFO` of an adapter folder.

    :raises GeneratorError: naming the file when it is missing, not JSON, or has a bad field.
    """
    path = Path(folder) / ADAPTER_INFO
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GeneratorError(f"cannot read {path}: {e}; an adapter folder needs it (written by `raft train`)") from None
    if not isinstance(data, dict) or not isinstance(data.get("base"), str) or not data["base"].strip():
        raise GeneratorError(f"{path}: field 'base' must name the base model (e.g. \"bundled\"); fix the file")
    fmt = data.get("prompt_format", "raft")
    if fmt not in PROMPT_FORMATS:
        raise GeneratorError(f"{path}: prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {fmt!r}")
    files = data.get("course_files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise GeneratorError(f"{path}: course_files must map file names to SHA-256 hex strings; fix the file")
    extra = {k: v for k, v in data.items() if k not in ("base", "prompt_format", "course_files")}
    return AdapterInfo(data["base"].strip(), fmt, dict(files), extra)


def course_share(info: AdapterInfo, indexed: Mapping[str, str]) -> float:
    """The share of the indexed files that are files of the adapter's course (same SHA-256), 0.0 to 1.0.

    :param indexed: file name -> SHA-256 of the index's files (its manifest's `files`).
    :returns: 0.0 when either side is empty.
    """
    if not indexed or not info.course_files:
        return 0.0
    ours = set(info.course_files.values())
    return sum(1 for sha in indexed.values() if sha in ours) / len(indexed)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (PEFT_CONFIG, PEFT_WEIGHTS, ADAPTER_INFO):
        path = folder / name
        if path.is_file():
            h.update(name.encode())
            h.update(path.read_bytes())  # a few MB: hashing the bytes keys the merge on the adapter itself
    return h.hexdigest()[:12]


_merge_lock = threading.Lock()


def merge_adapter(folder: Path, base_dir: Path, cache_dir: str | Path | None = None) -> Path:
    """The model folder of base + adapter, merged once into the model cache and
    reused afterwards.

    :param folder: the adapter folder (peft files + ADAPTER_INFO).
    :param base_dir: the base model's transformers folder (`ModelSpec.local_dir()` of `AdapterInfo.base`).
    :param cache_dir: the model cache root (None = models.default_cache_dir(); callers pass the setting cache_dir).
    :returns: a folder with config.json, model.safetensors, the base's tokenizer and PROMPT_FORMAT_FILE.
    :raises GeneratorError: an unreadable adapter folder, or an adapter that does not fit the base.
    """
    folder, base_dir = Path(folder), Path(base_dir)
    info = read_adapter_info(folder)
    if not (folder / PEFT_WEIGHTS).is_file():
        raise GeneratorError(f"no {PEFT_WEIGHTS} in {folder}: the adapter folder is incomplete")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{base_dir.name}+lora-{_digest(folder)}"

    def write(tmp: Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rag.common.atomic import write_json_atomic

        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            merged = PeftModel.from_pretrained(model, folder, is_trainable=False).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_dir, local_files_only=True).save_pretrained(tmp)
        write_json_atomic(tmp / PROMPT_FORMAT_FILE, {"prompt_format": info.prompt_format, "adapter": str(folder)})

    return publish_cached(target, is_valid_model_cache, write, _merge_lock,
                          f"cannot apply the LoRA adapter {folder} to {base_dir}")
