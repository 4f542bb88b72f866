"""Building and updating the index directory: one writer at a time, incremental, published atomically."""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from rag.errors import IndexNotFound, RagError
from rag.index.bm25 import BM25Index
from rag.index.embeddings import Embedder
from rag.index.store import FORMAT_VERSION, VectorIndex, _now, make_faiss
from rag.ingest.chunking import Chunk, Chunker
from rag.ingest.loaders import (
    Skipped,
    UnreadableFile,
    file_sha256,
    iter_files,
    read_file,
    source_name,
)


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
