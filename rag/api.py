"""The library entry points the CLI, the UI and RAFT share: settings in, embedder/index/retriever out."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rag.chunking import Chunker
from rag.config import Settings
from rag.embeddings import Embedder
from rag.index import BuildReport, ProgressFn, build_index
from rag.retrieve import Hit, Retriever


@lru_cache(maxsize=4)
def _embedder(model: str, dtype: str, batch_size: int) -> Embedder:
    return Embedder(model, dtype=dtype, batch_size=batch_size)


def get_embedder(settings: Settings) -> Embedder:
    """The configured embedder, one instance per process and configuration."""
    return _embedder(settings.embed_model, settings.embed_dtype, settings.embed_batch_size)


def make_chunker(embedder: Embedder, settings: Settings) -> Chunker:
    """A chunker sized in `embedder`'s own tokens."""
    return Chunker(embedder.tokenizer, embedder.max_tokens, settings.chunk_tokens, settings.chunk_overlap)


def index_corpus(corpus: Path, settings: Settings, *, rebuild: bool = False,
                 on_progress: ProgressFn | None = None) -> BuildReport:
    """Build or incrementally update the index at settings.index_dir from the files under `corpus`."""
    embedder = get_embedder(settings)
    return build_index(Path(corpus), settings.index_dir, embedder, make_chunker(embedder, settings),
                       faiss_type=settings.faiss_type, rebuild=rebuild, on_progress=on_progress)


def open_retriever(settings: Settings) -> Retriever:
    """A retriever over settings.index_dir (raises IndexNotFound / IndexMismatch with a clear message)."""
    return Retriever(settings.index_dir, get_embedder(settings), settings.mode, settings.top_k, settings.rrf_k)


def search(query: str, settings: Settings, k: int | None = None, mode: str | None = None) -> list[Hit]:
    """One-shot search; for many queries keep the Retriever from open_retriever()."""
    return open_retriever(settings).search(query, k, mode)
