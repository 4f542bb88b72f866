"""The pipelines bench.index_build times against each other (ours, plain sentence-transformers encode,
LangChain FAISS) and the corpora it times them on: corpus/ copied to a temp folder and an N-times copy of it.
See bench/index_build.py for what is measured and how."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from bench import benchutil as bu  # first: sets HF_HUB_OFFLINE before any HF import

import numpy as np

ALL_PIPELINES = ["ours-bf16", "plain-bf16", "ours-fp32", "plain-fp32", "langchain-fp32", "langchain-bf16"]
# Diagnostic, large copy only: plain encode called on consecutive 256-text slices, as build_index calls it.
EXTRA_LARGE = ["plain-bf16-sliced"]
BUILD_SLICE = 256  # build_index: max(embed_batch_size * 4, 256) texts per Embedder.encode call
DEFAULT_LARGE = ["ours-bf16", "plain-bf16", "langchain-fp32"]
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
PLAIN_BATCH = 16  # = Settings().embed_batch_size, so plain encode does the same batches' worth of work
QUICK_FILES = ["questions-language-model-basics.md", "quiz-week1-llm-fundamentals.md", "quiz-week3-rlhf-ppo.md"]


# ---- corpus preparation ----------------------------------------------------------------------

def make_corpora(tmp: Path, quick: bool, copies: int) -> tuple[Path, Path]:
    src = bu.ROOT / "corpus"
    files = [p for p in sorted(src.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if quick:
        files = [p for p in files if p.name in QUICK_FILES]
    small = tmp / "corpus-1x"
    small.mkdir()
    for p in files:
        shutil.copy2(p, small / p.name)
    large = tmp / f"corpus-{copies}x"
    for i in range(copies):
        d = large / f"copy{i:02d}"
        d.mkdir(parents=True)
        for p in files:  # a first line per copy: byte-identical files are indexed once (rag/index/build.py)
            (d / p.name).write_text(f"Copy {i} of the course.\n\n" + p.read_text(encoding="utf-8"), encoding="utf-8")
    return small, large


KNOBS = ("embed_model", "embed_batch_size", "chunk_tokens", "chunk_overlap", "faiss_type", "mode", "top_k", "rrf_k")


def shipped_defaults() -> dict[str, Any]:
    """The product's shipped defaults for the knobs that matter here (from the Settings class itself)."""
    from rag.config import Settings

    return {k: Settings.model_fields[k].default for k in KNOBS}


def settings_for(index_dir: Path, dtype: str, corpus: Path):
    from rag.config import Settings

    # Every knob explicit (= the shipped defaults, dtype aside), so a rag.toml or RAG_* env cannot skew results.
    return Settings(index_dir=index_dir, corpus_dir=corpus, embed_dtype=dtype, **shipped_defaults())


def corpus_chunks(corpus: Path, make, fresh_per_file: bool = False) -> list:
    """The chunks build_index makes, in its order (same reader, chunker and id de-duplication).

    `make()` gives a new Chunker; build_index uses one per build (its token-count memo then spans files),
    fresh_per_file=True uses one per file (no memo hits across the identical copies)."""
    from rag.ingest.loaders import iter_files, read_file, source_name

    out, seen = [], set()
    chunker = make()
    for path in iter_files(corpus):
        if fresh_per_file:
            chunker = make()
        doc = read_file(path, source_name(path, corpus))
        for c in chunker.split(doc):
            if c.id not in seen:
                seen.add(c.id)
                out.append(c)
    return out


# ---- the pipelines -----------------------------------------------------------------------------

class Pipelines:
    """Loaded models and the runners for each pipeline; models load once (timed separately)."""

    def __init__(self) -> None:
        self.load_seconds: dict[str, float] = {}
        self._plain: dict[str, Any] = {}
        self._lc: dict[str, Any] = {}
        self.cache: dict[str, np.ndarray] = {}  # embed_text -> vector, for the "-nomodel" runs

    def ours_embedder(self, dtype: str):
        from rag.api import get_embedder

        emb = get_embedder(settings_for(Path("/nonexistent"), DTYPES[dtype], bu.ROOT))
        key = f"ours-{dtype}"
        if key not in self.load_seconds:
            t, _ = bu.timed(lambda: emb.model)
            emb.encode(["warm up the model"])
            self.load_seconds[key] = t
        return emb

    def plain_model(self, dtype: str):
        if dtype not in self._plain:
            import torch
            from sentence_transformers import SentenceTransformer

            from rag.index.embeddings import bundled_model_path

            kw = {"model_kwargs": {"dtype": torch.bfloat16}} if dtype == "bf16" else {}
            t, m = bu.timed(lambda: SentenceTransformer(str(bundled_model_path()), device="cpu", **kw))
            m.encode(["warm up the model"])
            self._plain[dtype] = m
            self.load_seconds[f"plain-{dtype}"] = t
        return self._plain[dtype]

    def lc_embeddings(self, dtype: str):
        if dtype not in self._lc:
            import torch
            from langchain_huggingface import HuggingFaceEmbeddings

            from rag.index.embeddings import bundled_model_path

            mk: dict[str, Any] = {"device": "cpu"}
            if dtype == "bf16":
                mk["model_kwargs"] = {"dtype": torch.bfloat16}
            t, e = bu.timed(lambda: HuggingFaceEmbeddings(model_name=str(bundled_model_path()), model_kwargs=mk,
                                                          encode_kwargs={"normalize_embeddings": True}))
            e.embed_documents(["warm up the model"])
            self._lc[dtype] = e
            self.load_seconds[f"langchain-{dtype}"] = t
        return self._lc[dtype]

    def prepare(self, name: str) -> None:
        kind, dtype = name.split("-")[:2]
        {"ours": self.ours_embedder, "plain": self.plain_model, "langchain": self.lc_embeddings}[kind](dtype)

    def run(self, name: str, corpus: Path, chunks: list, index_dir: Path) -> dict[str, Any]:
        """One timed run of pipeline `name`; returns seconds (+ details), and keeps vectors/store.

        "ours-<dtype>-nomodel" is build_index with the model call replaced by a lookup in self.cache."""
        kind, dtype = name.split("-")[:2]
        nomodel = name.endswith("-nomodel")
        self.prepare(name)
        if kind == "ours":
            from rag.api import index_corpus

            settings = settings_for(index_dir, DTYPES[dtype], corpus)
            marks: dict[str, float] = {}

            def progress(stage: str, done: int, total: int) -> None:
                marks.setdefault(stage, time.perf_counter())

            emb = self.ours_embedder(dtype)
            if nomodel:  # same build_index code, the model swapped for a lookup of known vectors
                cache = self.cache
                emb.encode = lambda texts, show_progress=False: np.stack([cache[t] for t in texts]).astype(np.float32)
            try:
                t0 = time.perf_counter()
                rep = index_corpus(corpus, settings, on_progress=progress)
                t1 = time.perf_counter()
            finally:
                emb.__dict__.pop("encode", None)
            assert rep.wrote and rep.chunks_total == len(chunks), (rep.chunks_total, len(chunks))
            first_after_read = marks.get("embed", marks.get("index", t1))
            stages = {"setup": marks.get("read", t0) - t0,
                      "read+chunk": first_after_read - marks.get("read", t0),
                      "embed": (marks["index"] - marks["embed"]) if "embed" in marks else 0.0,
                      "faiss+bm25+save": t1 - marks.get("index", t1)}
            return {"seconds": t1 - t0, "stages": stages, "chunks_embedded": rep.chunks_embedded}
        texts = [c.embed_text for c in chunks]
        if kind == "plain":
            m = self.plain_model(dtype)
            step = BUILD_SLICE if name.endswith("-sliced") else max(len(texts), 1)

            def enc() -> np.ndarray:
                parts = [m.encode(texts[i:i + step], batch_size=PLAIN_BATCH, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False) for i in range(0, len(texts), step)]
                return np.concatenate(parts) if parts else np.zeros((0, 384), np.float32)

            t, vecs = bu.timed(enc)
            return {"seconds": t, "vectors": np.asarray(vecs, dtype=np.float32)}
        from langchain_community.vectorstores import FAISS
        from langchain_core.documents import Document

        emb = self.lc_embeddings(dtype)
        docs = [Document(page_content=c.embed_text, metadata={"chunk_id": c.id, "source": c.source}) for c in chunks]
        t, store = bu.timed(lambda: FAISS.from_documents(docs, emb))
        return {"seconds": t, "store": store}
