"""The index directory: FAISS vectors + chunk store + BM25 + manifest, built incrementally, saved atomically.

Layout: INDEX_DIR/CURRENT names the live generation folder (gen-*); each generation holds
manifest.json, index.faiss, vectors.npy, chunks.jsonl and bm25/. A build writes a new generation,
fsyncs it and then replaces CURRENT in one rename, so a reader never sees half an index and a
killed build leaves the previous one loadable. Nothing is pickled.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from rag.atomic import fsync_dir, write_text_atomic
from rag.chunking import Chunk, Chunker
from rag.documents import Skipped, file_sha256, iter_files, read_file, source_name, UnreadableFile
from rag.embeddings import Embedder
from rag.errors import IndexMismatch, IndexNotFound, RagError
from rag.lexical import BM25Index

FORMAT_VERSION = 1
CURRENT = "CURRENT"
KEEP_GENERATIONS = 2


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_faiss(kind: str, dim: int, n: int):
    """An empty FAISS index of `kind` over inner product (= cosine on unit vectors), keyed by chunk id."""
    import faiss

    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.hnsw.efSearch = 64
        return faiss.IndexIDMap2(hnsw)
    if kind == "ivf":
        nlist = max(1, min(4096, int(4 * np.sqrt(max(n, 1))), n // 39))  # faiss wants ~39 points per list
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.nprobe = min(nlist, 16)
        return faiss.IndexIDMap2(ivf)
    raise RagError(f"unknown FAISS index type {kind!r}: use flat, hnsw or ivf")


@dataclass
class BuildReport:
    """What a `rag index` run did, for the summary line and --json."""

    corpus: str
    index_dir: str
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    kept_previous: list[str] = field(default_factory=list)
    chunks_total: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0
    wrote: bool = False

    @property
    def nothing_changed(self) -> bool:
        return not self.wrote

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "skipped"}
        d["skipped"] = [{"source": s.source, "reason": s.reason} for s in self.skipped]
        d["nothing_changed"] = self.nothing_changed
        return d


class VectorIndex:
    """A loaded index generation: chunks in order, their vectors, the FAISS index and the BM25 side."""

    def __init__(self, chunks: list[Chunk], vectors: np.ndarray, faiss_index: Any, bm25: BM25Index,
                 manifest: dict[str, Any], path: Path | None = None):
        self.chunks = chunks
        self.vectors = vectors
        self.faiss = faiss_index
        self.bm25 = bm25
        self.manifest = manifest
        self.path = path
        self.pos_by_id = {c.id: i for i, c in enumerate(chunks)}

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def generation(self) -> str:
        return self.path.name if self.path else ""

    def search_dense(self, qvec: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Top-k (position, cosine) pairs, best first."""
        if not self.chunks:
            return []
        scores, ids = self.faiss.search(np.asarray(qvec, dtype=np.float32).reshape(1, -1), min(k, len(self.chunks)))
        return [(self.pos_by_id[int(i)], float(s)) for s, i in zip(scores[0], ids[0]) if i != -1]

    # ---- persistence -------------------------------------------------------------------------

    def save(self, index_dir: Path) -> Path:
        """Write a new generation and switch CURRENT to it atomically; return its folder."""
        import faiss

        index_dir.mkdir(parents=True, exist_ok=True)
        name = f"gen-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp = index_dir / f".{name}.tmp"
        tmp.mkdir()
        try:
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
                for c in self.chunks:
                    f.write(json.dumps(c.to_record(), ensure_ascii=False) + "\n")
            np.save(tmp / "vectors.npy", self.vectors, allow_pickle=False)
            faiss.write_index(self.faiss, str(tmp / "index.faiss"))
            self.bm25.save(tmp / "bm25")
            (tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=1, ensure_ascii=False), encoding="utf-8")
            for p in [*tmp.iterdir(), *(tmp / "bm25").iterdir()]:
                if p.is_file():
                    with open(p, "rb") as fh:
                        os.fsync(fh.fileno())
            fsync_dir(tmp / "bm25")
            fsync_dir(tmp)
            final = index_dir / name
            os.rename(tmp, final)
            fsync_dir(index_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_text_atomic(index_dir / CURRENT, name + "\n")
        self.path = final
        _collect_garbage(index_dir, keep=name)
        return final

    @classmethod
    def load(cls, index_dir: Path, embedder: Embedder | None = None) -> "VectorIndex":
        """Load the live generation, validating every file; refuse an index built with another embedder."""
        import faiss

        gen = current_generation(index_dir)
        try:
            manifest = json.loads((gen / "manifest.json").read_text(encoding="utf-8"))
            if manifest.get("format_version") != FORMAT_VERSION:
                raise RagError(f"index at {index_dir} has format {manifest.get('format_version')}, "
                               f"this version reads {FORMAT_VERSION}: rebuild with `rag index --rebuild`")
            if embedder is not None:
                check_embedder(manifest, embedder, index_dir)
            chunks = []
            with open(gen / "chunks.jsonl", encoding="utf-8") as f:
                for line in f:
                    chunks.append(Chunk.from_record(json.loads(line)))
            vectors = np.load(gen / "vectors.npy", allow_pickle=False)
            fidx = faiss.read_index(str(gen / "index.faiss"))
            bm25 = BM25Index.load(gen / "bm25")
        except RagError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise RagError(f"index at {gen} is damaged ({type(exc).__name__}: {str(exc)[:120]}); "
                           "rebuild it with `rag index --rebuild`") from None
        dim = manifest["embedding"]["dim"]
        n = len(chunks)
        if vectors.shape != (n, dim) or fidx.ntotal != n or fidx.d != dim or bm25.n_docs != n \
                or manifest["counts"]["chunks"] != n or len({c.id for c in chunks}) != n:
            raise RagError(f"index at {gen} is inconsistent (chunks {n}, vectors {vectors.shape}, "
                           f"faiss {fidx.ntotal}, bm25 {bm25.n_docs}); rebuild it with `rag index --rebuild`")
        return cls(chunks, vectors, fidx, bm25, manifest, gen)


def check_embedder(manifest: dict[str, Any], embedder: Embedder, index_dir: Path) -> None:
    """Raise IndexMismatch when the index's vectors come from another model than `embedder`."""
    built = manifest.get("embedding", {})
    if built.get("model_id") != embedder.model_id or int(built.get("dim", -1)) != embedder.dim:
        raise IndexMismatch(
            f"index at {index_dir} was built with embedding model {built.get('model_id')!r} "
            f"({built.get('dim')}-d) but {embedder.model_id!r} ({embedder.dim}-d) is configured: "
            f"set RAG_EMBED_MODEL / --embed-model to match, or rebuild with `rag index --rebuild`")


def current_generation(index_dir: Path) -> Path:
    """The folder CURRENT points at; IndexNotFound when there is no built index."""
    pointer = index_dir / CURRENT
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        raise IndexNotFound(f"no index at {index_dir}: build it with `rag index corpus/` "
                            "(or point --index-dir / RAG_INDEX_DIR at one)") from None
    gen = index_dir / name
    if not name.startswith("gen-") or "/" in name or not gen.is_dir():
        raise RagError(f"index at {index_dir} is damaged (CURRENT names {name!r}, which is missing); "
                       "rebuild it with `rag index --rebuild`")
    return gen


def generation_stamp(index_dir: Path) -> str | None:
    """Cheap check for 'has the index changed?': the live generation's name, or None."""
    try:
        return (index_dir / CURRENT).read_text().strip()
    except OSError:
        return None


def _collect_garbage(index_dir: Path, keep: str) -> None:
    # Keep the newest generations so a reader that just read CURRENT can still open its folder.
    gens = sorted((p for p in index_dir.glob("gen-*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    survivors = {keep, *[g.name for g in gens[:KEEP_GENERATIONS]]}
    for g in gens:
        if g.name not in survivors:
            shutil.rmtree(g, ignore_errors=True)
    for stale in index_dir.glob(".gen-*.tmp"):
        if time.time() - stale.stat().st_mtime > 3600:  # a killed build's leftovers
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """One writer at a time per index directory (readers never need the lock)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RagError(f"another `rag index` is writing {index_dir}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


ProgressFn = Callable[[str, int, int], None]


def build_index(corpus: Path, index_dir: Path, embedder: Embedder, chunker: Chunker, *,
                faiss_type: str = "flat", rebuild: bool = False, show_progress: bool = False,
                on_progress: ProgressFn | None = None) -> BuildReport:
    """Create or incrementally update the index of `corpus`: only new or changed files are re-read,
    only chunks with new ids are embedded, deleted files' chunks are dropped."""
    t0 = time.perf_counter()
    corpus = corpus.resolve()
    if not corpus.exists():
        raise RagError(f"corpus folder {corpus} does not exist: give a folder of .md/.txt/.pdf/.html files")
    report = BuildReport(corpus=str(corpus), index_dir=str(index_dir))
    with build_lock(index_dir):
        old: VectorIndex | None = None
        if not rebuild:
            try:
                old = VectorIndex.load(index_dir, embedder)
            except IndexNotFound:
                old = None
        old_files: dict[str, Any] = old.manifest["files"] if old else {}
        same_chunker = bool(old) and old.manifest.get("chunker") == chunker.params()
        same_faiss = bool(old) and old.manifest.get("faiss", {}).get("type") == faiss_type
        old_by_source: dict[str, list[int]] = {}
        if old:
            for i, c in enumerate(old.chunks):
                old_by_source.setdefault(c.source, []).append(i)

        paths = list(iter_files(corpus))
        new_chunks: list[Chunk] = []
        reuse_pos: list[int | None] = []  # per new chunk: position of its vector in `old`, or None
        files: dict[str, Any] = {}
        seen_sources: set[str] = set()
        for n_done, path in enumerate(paths):
            src = source_name(path, corpus)
            seen_sources.add(src)
            if on_progress:
                on_progress("read", n_done, len(paths))
            try:
                data = path.read_bytes()
            except OSError as exc:
                report.skipped.append(Skipped(src, f"cannot read: {exc.strerror or exc}"))
                data = None
            digest = file_sha256(data) if data is not None else None
            prev = old_files.get(src)
            def keep_previous() -> None:
                files[src] = prev
                for i in old_by_source.get(src, []):
                    new_chunks.append(old.chunks[i])
                    reuse_pos.append(i)

            if prev and digest == prev["sha256"] and same_chunker:
                report.unchanged.append(src)
                keep_previous()
                continue
            doc = None
            if data is not None:
                try:
                    doc = read_file(path, src, data)
                except UnreadableFile as exc:
                    report.skipped.append(Skipped(src, str(exc)))
            if doc is None:
                if prev:  # keep what was indexed before rather than lose it to a bad edit
                    report.kept_previous.append(src)
                    keep_previous()
                continue
            (report.changed if prev else report.added).append(src)
            chunks = chunker.split(doc)
            files[src] = {"sha256": digest, "bytes": len(data), "chunks": len(chunks), "kind": doc.metadata.get("kind")}
            for c in chunks:
                new_chunks.append(c)
                reuse_pos.append(old.pos_by_id.get(c.id) if old else None)
        report.deleted = sorted(s for s in old_files if s not in seen_sources)
        if on_progress:
            on_progress("read", len(paths), len(paths))

        # The same text in two places gets one entry (ids are content hashes).
        dedup: dict[int, int] = {}
        keep_idx = []
        for j, c in enumerate(new_chunks):
            if c.id not in dedup:
                dedup[c.id] = j
                keep_idx.append(j)
        new_chunks = [new_chunks[j] for j in keep_idx]
        reuse_pos = [reuse_pos[j] for j in keep_idx]

        changed = bool(report.added or report.changed or report.deleted) or old is None \
            or not same_chunker or not same_faiss or rebuild
        report.chunks_total = len(new_chunks)
        if not changed and old is not None and [c.id for c in new_chunks] == [c.id for c in old.chunks]:
            report.seconds = time.perf_counter() - t0
            return report

        dim = embedder.dim
        vectors = np.zeros((len(new_chunks), dim), dtype=np.float32)
        # Longest first, so each encode() slice holds texts of similar length: sentence-transformers
        # sorts by length only within one call, and mixed slices pad every text to their longest.
        todo = sorted((j for j, p in enumerate(reuse_pos) if p is None), key=lambda j: -len(new_chunks[j].embed_text))
        for j, p in enumerate(reuse_pos):
            if p is not None:
                vectors[j] = old.vectors[p]
        if todo:
            texts = [new_chunks[j].embed_text for j in todo]
            batch = max(embedder.batch_size * 4, 256)
            for start in range(0, len(texts), batch):
                if on_progress:
                    on_progress("embed", start, len(texts))
                vectors[todo[start:start + batch]] = embedder.encode(texts[start:start + batch])
            if on_progress:
                on_progress("embed", len(texts), len(texts))
        report.chunks_embedded = len(todo)

        if on_progress:
            on_progress("index", 0, 1)
        fidx = make_faiss(faiss_type, dim, len(new_chunks))
        ids = np.array([c.id for c in new_chunks], dtype=np.int64)
        if len(new_chunks):
            if faiss_type == "ivf":
                fidx.train(vectors)
            fidx.add_with_ids(vectors, ids)
        bm25 = BM25Index.build([c.embed_text for c in new_chunks])
        created = old.manifest.get("created") if old else None
        manifest = {
            "format_version": FORMAT_VERSION,
            "embedding": {"model_id": embedder.model_id, "dim": dim, "normalized": True,
                          "dtype": embedder.dtype, "max_tokens": embedder.max_tokens, "vector_dtype": "float32"},
            "chunker": chunker.params(),
            "faiss": {"type": faiss_type, "metric": "inner_product", "ids": "chunk_id (IndexIDMap2)"},
            "bm25": {"library": "bm25s", "stemmer": "english", "stopwords": "en"},
            "corpus_root": str(corpus),
            "files": files,
            "counts": {"files": len(files), "chunks": len(new_chunks)},
            "created": created or _now(),
            "updated": _now(),
        }
        VectorIndex(new_chunks, vectors, fidx, bm25, manifest).save(index_dir)
        if on_progress:
            on_progress("index", 1, 1)
        report.wrote = True
        report.seconds = time.perf_counter() - t0
        return report
