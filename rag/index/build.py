"""Building and updating the index directory: one writer at a time, incremental, published atomically.

Every entry the corpus walk sees ends up indexed or in the report's `skipped` list with its reason
(rag.ingest.paths.walk_corpus), and a build that finds no document raises NoDocuments instead of
publishing an empty index (a folder of .docx files once indexed with exit 0 and no word). A link out
of the course folder is skipped unless `follow_outside_links`, and no error of a loader or the chunker
stops a build: the file is skipped with its reason (one PDF decompression bomb once stopped
`rag index` with a traceback). A file indexed with text no reader sees dropped (hidden HTML, front matter,
comments) or parts its reader left out (hidden slides, scanned PDF pages) gets a note in the report's `notes`.
Identical files (same bytes under two names) are indexed once: the copy already in the index, else the
first in path order; the others are skipped with "same content as X". Both copies would otherwise fill
the top-k with the same passage twice, and a user who cites either finds the text under the kept name.

The two heavy steps, reading + chunking the files that changed and embedding the chunks with new ids, go
through an engine: `LocalEngine` (this process, the default) or `rag.index.ray_engine.RayEngine` (a Ray
Data pipeline on a cluster, `rag index --engine ray`). Every decision (what changed, copies, de-duplication,
reused vectors, the manifest, the atomic publish) stays here, so both engines write the same index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from rag.common.files import file_sha256, os_reason, path_sha256
from rag.common.runfolder import FolderLock
from rag.errors import IndexNotFound, NoDocuments, UnreadableFile
from rag.index.bm25 import BM25Index
from rag.index.embeddings import Embedder
from rag.index.store import (
    FORMAT_VERSION,
    VectorIndex,
    ensure_index_dir,
    make_faiss,
    utc_now,
)
from rag.ingest.chunking import Chunk, Chunker
from rag.ingest.loaders import dropped_note, read_file, same_content
from rag.ingest.paths import SUPPORTED_LIST, Skipped, open_corpus, source_name, walk_corpus


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
    notes: list[Skipped] = field(default_factory=list)  # files indexed with text dropped or parts left out
    kept_previous: list[str] = field(default_factory=list)
    chunks_total: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0
    wrote: bool = False

    @property
    def nothing_changed(self) -> bool:
        return not self.wrote

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("skipped", "notes")}
        d["skipped"] = [{"source": s.source, "reason": s.reason} for s in self.skipped]
        d["notes"] = [{"source": s.source, "reason": s.reason} for s in self.notes]
        d["nothing_changed"] = self.nothing_changed
        return d


def build_lock(index_dir: Path) -> FolderLock:
    """One writer at a time per index directory (readers never need the lock): `with build_lock(dir):`."""
    return FolderLock(Path(index_dir), f"another `rag index` is writing {index_dir}; wait for it to finish",
                      what="index folder", hint="fix its permissions or choose another --index-dir")


ProgressFn = Callable[[str, int, int], None]


@dataclass
class FileChunks:
    """One file read, parsed and split, or why it could not be.

    :param sha256: SHA-256 (hex) of the bytes read; None when the file could not be read.
    :param size: bytes read.
    :param kind: the loader's document kind (`Document.metadata["kind"]`).
    :param chunks: the file's chunks in order; None when it could not be read or parsed.
    :param problem: the skip reason when `chunks` is None ("cannot read: ...", or the loader's message).
    :param dropped: characters of text no reader sees that the loader dropped, by kind (`Document.metadata`).
    :param notes: what the loader left out of an indexed file and why, one line each (hidden slides,
        scanned pages: `Document.metadata["notes"]`).
    """

    sha256: str | None = None
    size: int = 0
    kind: str | None = None
    chunks: list[Chunk] | None = None
    problem: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_and_chunk(path: Path, source: str, chunker: Chunker) -> FileChunks:
    """Read one corpus file, parse it with its loader and split it (the per-file step of a build).

    :param path: the file.
    :param source: its source name (path relative to the corpus root), stored in each chunk.
    :param chunker: the splitter.
    :returns: the chunks, or the reason the file is skipped: never raises for a file that cannot be read,
        parsed (`read_file` turns any loader error into its reason) or split.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return FileChunks(problem=f"cannot read: {os_reason(exc)}")
    digest = file_sha256(data)
    try:
        doc = read_file(path, source, data, ocr=chunker.ocr)
    except UnreadableFile as exc:
        return FileChunks(sha256=digest, size=len(data), problem=str(exc))
    try:
        chunks = chunker.split(doc)
    except Exception as exc:  # a file the splitter cannot handle is skipped, not the build stopped
        detail = " ".join(str(exc).split())[:120]
        return FileChunks(sha256=digest, size=len(data), problem=f"cannot be split into passages "
                          f"({type(exc).__name__}: {detail})")
    return FileChunks(digest, len(data), doc.metadata.get("kind"), chunks, dropped=doc.metadata.get("dropped", {}),
                      notes=list(doc.metadata.get("notes", [])))


class BuildEngine(Protocol):
    """Where a build's two heavy steps run; `LocalEngine` (here) or `rag.index.ray_engine.RayEngine`."""

    def read_files(self, jobs: Sequence[tuple[Path, str]], chunker: Chunker, embedder: Embedder,
                   on_progress: ProgressFn | None = None) -> list[FileChunks]:
        """`read_and_chunk` of each (path, source) job with `chunker` (whose tokenizer is `embedder`'s);
        the results in the order of `jobs`."""
        ...

    def embed(self, texts: Sequence[str], embedder: Embedder, on_progress: ProgressFn | None = None) -> np.ndarray:
        """The (len(texts), embedder.dim) float32 unit vectors of `texts`, in their order."""
        ...


class LocalEngine:
    """The single-process engine: files read in order, texts embedded in slices in this process."""

    def read_files(self, jobs: Sequence[tuple[Path, str]], chunker: Chunker, embedder: Embedder,
                   on_progress: ProgressFn | None = None) -> list[FileChunks]:
        """Read and chunk each (path, source) in turn; reports ("read", done, len(jobs))."""
        out = []
        for n_done, (path, source) in enumerate(jobs):
            if on_progress:
                on_progress("read", n_done, len(jobs))
            out.append(read_and_chunk(path, source, chunker))
        return out

    def embed(self, texts: Sequence[str], embedder: Embedder, on_progress: ProgressFn | None = None) -> np.ndarray:
        """Embed in slices of max(4 x batch size, 256) texts; reports ("embed", done, len(texts))."""
        vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
        batch = max(embedder.batch_size * 4, 256)
        for start in range(0, len(texts), batch):
            if on_progress:
                on_progress("embed", start, len(texts))
            vectors[start:start + batch] = embedder.encode(texts[start:start + batch])
        if on_progress:
            on_progress("embed", len(texts), len(texts))
        return vectors


def build_index(corpus: Path, index_dir: Path, embedder: Embedder, chunker: Chunker, *,
                faiss_type: str = "flat", rebuild: bool = False, show_progress: bool = False,
                on_progress: ProgressFn | None = None, engine: BuildEngine | None = None,
                follow_outside_links: bool = False) -> BuildReport:
    """Create or incrementally update the index of `corpus`: only new or changed files are re-read,
    only chunks with new ids are embedded, deleted files' chunks are dropped.

    :param corpus: a folder of course files, or one file.
    :param index_dir: the index folder (created when missing).
    :param embedder: the embedding model; an index built with another one is refused unless `rebuild`.
    :param chunker: the splitter; other chunker settings than the index's re-chunk every file.
    :param faiss_type: "flat", "hnsw" or "ivf".
    :param rebuild: re-read and re-embed everything.
    :param on_progress: called with (stage "read"|"embed"|"index", done, total).
    :param engine: where files are read + chunked and new chunks embedded (default `LocalEngine()`).
    :param follow_outside_links: index links that lead out of the corpus folder too (rag.ingest.paths);
        off, they are skipped with their reason.
    :returns: what was added, changed, kept, deleted and skipped (every entry the walk saw, with its reason).
    :raises NoDocuments: nothing to index (no file, or every one skipped); the previous index stays.
    :raises RagError: the corpus or index folder cannot be used, another build holds the lock, the index
        is damaged, or it was built with another embedder (IndexMismatch).
    """
    t0 = time.perf_counter()
    corpus = open_corpus(corpus)
    ensure_index_dir(index_dir)
    report = BuildReport(corpus=str(corpus), index_dir=str(index_dir))
    with build_lock(index_dir):
        old = None if rebuild else previous_index(index_dir, embedder)
        old_files: dict[str, Any] = old.manifest["files"] if old else {}
        same_chunker = bool(old) and old.manifest.get("chunker") == chunker.params()
        same_faiss = bool(old) and old.manifest.get("faiss", {}).get("type") == faiss_type

        paths, walk_skipped = walk_corpus(corpus, follow_outside_links)
        report.skipped.extend(walk_skipped)
        sources = {path: source_name(path, corpus) for path in paths}
        digests = file_digests(paths)
        copy_of = identical_copies(paths, sources, digests, old_files)

        def unchanged(path: Path) -> bool:
            prev = old_files.get(sources[path])
            return bool(prev) and digests[path] is not None and digests[path] == prev["sha256"] and same_chunker

        engine = engine or LocalEngine()
        to_read = [p for p in paths if sources[p] not in copy_of and not unchanged(p)]
        read = dict(zip(to_read, engine.read_files([(p, sources[p]) for p in to_read], chunker, embedder,
                                                   on_progress)))
        contents = collect_contents(paths, sources, read, copy_of, old, report)
        report.deleted = sorted(s for s in old_files if s not in set(sources.values()))
        copies_of_skipped(report.skipped, copy_of)
        if not contents.files:
            raise NoDocuments(nothing_to_index(corpus, report.skipped), report.skipped)
        if on_progress:
            on_progress("read", len(paths), len(paths))

        contents = contents.unique()
        changed = bool(report.added or report.changed or report.deleted) or old is None \
            or not same_chunker or not same_faiss or rebuild
        report.chunks_total = len(contents.chunks)
        if not changed and old is not None and [c.id for c in contents.chunks] == [c.id for c in old.chunks]:
            report.seconds = time.perf_counter() - t0
            return report

        vectors, report.chunks_embedded = chunk_vectors(contents, old, engine, embedder, on_progress)
        if on_progress:
            on_progress("index", 0, 1)
        manifest = index_manifest(corpus, contents, embedder, chunker, faiss_type,
                                  old.manifest.get("created") if old else None)
        VectorIndex(contents.chunks, vectors, make_search_index(faiss_type, contents.chunks, vectors),
                    BM25Index.build([c.embed_text for c in contents.chunks]), manifest).save(index_dir)
        if on_progress:
            on_progress("index", 1, 1)
        report.wrote = True
        report.seconds = time.perf_counter() - t0
        return report


def previous_index(index_dir: Path, embedder: Embedder) -> VectorIndex | None:
    """The index already in `index_dir`, or None when there is none.

    :raises RagError: the index is damaged, or was built with another embedder (IndexMismatch).
    """
    try:
        return VectorIndex.load(index_dir, embedder)
    except IndexNotFound:
        return None


@dataclass
class IndexContents:
    """What the new index holds, in order: its chunks, the manifest entry of each indexed file, and for each
    chunk the position of its vector in the previous index (None: the chunk is new and must be embedded)."""

    files: dict[str, Any] = field(default_factory=dict)
    chunks: list[Chunk] = field(default_factory=list)
    reuse_pos: list[int | None] = field(default_factory=list)

    def keep_previous(self, src: str, entry: dict[str, Any], old: VectorIndex, positions: list[int]) -> None:
        """Keep file `src` as the previous index holds it: its manifest `entry`, its chunks (at `positions` in
        `old`) and their vectors."""
        self.files[src] = entry
        for i in positions:
            self.chunks.append(old.chunks[i])
            self.reuse_pos.append(i)

    def unique(self) -> IndexContents:
        """The same contents with the same text in two places kept once, first place first (ids are content
        hashes)."""
        first: dict[int, int] = {}
        keep = []
        for j, c in enumerate(self.chunks):
            if c.id not in first:
                first[c.id] = j
                keep.append(j)
        return IndexContents(self.files, [self.chunks[j] for j in keep], [self.reuse_pos[j] for j in keep])


def collect_contents(paths: list[Path], sources: dict[Path, str], read: dict[Path, FileChunks],
                     copy_of: dict[str, str], old: VectorIndex | None, report: BuildReport) -> IndexContents:
    """The new index's contents from the walk: files read anew, files kept as indexed before, copies skipped.

    :param paths: the files of the walk, in order; `sources` their source names.
    :param read: the files read and chunked by this build (the others are unchanged).
    :param copy_of: {source of a copy: source of the file indexed instead} (see `identical_copies`).
    :param old: the previous index, or None.
    :param report: filled in place: added, changed, unchanged, kept_previous, skipped and notes.
    :returns: the contents in walk order; a file that cannot be read now keeps what was indexed before.
    """
    old_by_source: dict[str, list[int]] = {}
    for i, c in enumerate(old.chunks if old else []):
        old_by_source.setdefault(c.source, []).append(i)
    old_files: dict[str, Any] = old.manifest["files"] if old else {}
    contents = IndexContents()
    for path in paths:
        src = sources[path]
        if src in copy_of:
            report.skipped.append(Skipped(src, same_content(copy_of[src])))
            continue
        prev = old_files.get(src)
        if path not in read:  # unchanged
            report.unchanged.append(src)
            contents.keep_previous(src, prev, old, old_by_source.get(src, []))
            continue
        got = read[path]
        if got.chunks is None:
            report.skipped.append(Skipped(src, got.problem or "cannot read"))
            if prev:  # keep what was indexed before rather than lose it to a bad edit
                report.kept_previous.append(src)
                contents.keep_previous(src, prev, old, old_by_source.get(src, []))
            continue
        (report.changed if prev else report.added).append(src)
        contents.files[src] = {"sha256": got.sha256, "bytes": got.size, "chunks": len(got.chunks), "kind": got.kind}
        if got.dropped:
            contents.files[src]["dropped"] = got.dropped
            report.notes.append(Skipped(src, dropped_note(got.dropped)))
        if got.notes:
            contents.files[src]["notes"] = got.notes
            report.notes.extend(Skipped(src, note) for note in got.notes)
        for c in got.chunks:
            contents.chunks.append(c)
            contents.reuse_pos.append(old.pos_by_id.get(c.id) if old else None)
    return contents


def chunk_vectors(contents: IndexContents, old: VectorIndex | None, engine: BuildEngine, embedder: Embedder,
                  on_progress: ProgressFn | None) -> tuple[np.ndarray, int]:
    """The unit vector of every chunk: the previous index's where it holds the chunk, else embedded now.

    :returns: (vectors float32 [chunks, embedder.dim], how many chunks were embedded).
    """
    chunks, reuse_pos = contents.chunks, contents.reuse_pos
    vectors = np.zeros((len(chunks), embedder.dim), dtype=np.float32)
    # Longest first, so each encode() slice holds texts of similar length: sentence-transformers
    # sorts by length only within one call, and mixed slices pad every text to their longest.
    todo = sorted((j for j, p in enumerate(reuse_pos) if p is None), key=lambda j: -len(chunks[j].embed_text))
    for j, p in enumerate(reuse_pos):
        if p is not None:
            vectors[j] = old.vectors[p]
    if todo:
        vectors[todo] = engine.embed([chunks[j].embed_text for j in todo], embedder, on_progress)
    return vectors, len(todo)


def make_search_index(faiss_type: str, chunks: list[Chunk], vectors: np.ndarray) -> Any:
    """The FAISS index of `vectors` [chunks, dim] (trained first for "ivf"), keyed by the chunks' ids."""
    fidx = make_faiss(faiss_type, vectors.shape[1], len(chunks))
    if len(chunks):
        if faiss_type == "ivf":
            fidx.train(vectors)
        fidx.add_with_ids(vectors, np.array([c.id for c in chunks], dtype=np.int64))
    return fidx


def index_manifest(corpus: Path, contents: IndexContents, embedder: Embedder, chunker: Chunker, faiss_type: str,
                   created: str | None) -> dict[str, Any]:
    """The manifest the index folder is validated by: formats, models and settings, and each file's entry.

    :param created: when the previous index was first built (kept across updates); None: now.
    """
    return {
        "format_version": FORMAT_VERSION,
        "embedding": {"model_id": embedder.model_id, "dim": embedder.dim, "normalized": True,
                      "dtype": embedder.dtype, "max_tokens": embedder.max_tokens, "vector_dtype": "float32"},
        "chunker": chunker.params(),
        "faiss": {"type": faiss_type, "metric": "inner_product", "ids": "chunk_id (IndexIDMap2)"},
        "bm25": {"library": "bm25s", "stemmer": "english", "stopwords": "en"},
        "corpus_root": str(corpus),
        "files": contents.files,
        "counts": {"files": len(contents.files), "chunks": len(contents.chunks)},
        "created": created or utc_now(),
        "updated": utc_now(),
    }


def file_digests(paths: list[Path]) -> dict[Path, str | None]:
    """Each file's SHA-256 (hex), streamed; None for a file that cannot be read (the build reports it)."""
    digests: dict[Path, str | None] = {}
    for path in paths:
        try:
            digests[path] = path_sha256(path)
        except OSError:
            digests[path] = None
    return digests


def identical_copies(paths: list[Path], sources: dict[Path, str], digests: dict[Path, str | None],
                     old_files: dict[str, Any]) -> dict[str, str]:
    """Which files are byte-identical copies of another file of the corpus, and the one indexed instead.

    The kept file of a group is the one the index already holds with this content (so an added copy
    changes nothing), else the first in path order.

    :param paths: the files of the walk, in order.
    :param sources: each path's source name.
    :param digests: each path's SHA-256 (see `file_digests`); unreadable files (None) are left out.
    :param old_files: the previous manifest's "files" ({source: {"sha256": ...}}), or {}.
    :returns: {source of a copy: source of the file indexed instead}.
    """
    groups: dict[str, list[str]] = {}
    for path in paths:
        if digests[path] is not None:
            groups.setdefault(digests[path], []).append(sources[path])
    copy_of: dict[str, str] = {}
    for digest, names in groups.items():
        if len(names) > 1:
            kept = next((n for n in names if (old_files.get(n) or {}).get("sha256") == digest), names[0])
            copy_of.update({n: kept for n in names if n != kept})
    return copy_of


def copies_of_skipped(skipped: list[Skipped], copy_of: dict[str, str]) -> None:
    """Give a copy of a file that was itself skipped that file's reason, in place.

    "same content as f00000.txt (identical files are indexed once)" told a user that the empty f00000.txt
    was indexed: 10,000 empty files were 9,999 such lines. A copy of a skipped file is skipped for the
    same reason, and says which file it copies: "empty file (no text); same content as f00000.txt".

    :param skipped: the build's skipped entries (a copy's reason is `same_content(kept)` until here).
    :param copy_of: {source of a copy: source of the file indexed instead} (see `identical_copies`).
    """
    reasons = {s.source: s.reason for s in skipped if s.source not in copy_of}
    for entry in skipped:
        kept = copy_of.get(entry.source)
        if kept in reasons and entry.reason == same_content(kept):
            entry.reason = f"{reasons[kept]}; same content as {kept}"


def nothing_to_index(corpus: Path, skipped: list[Skipped]) -> str:
    """The one-line message of a build that found no document in `corpus`."""
    if not skipped:
        return f"no documents to index: {corpus} holds no files; add {SUPPORTED_LIST} files"
    first = skipped[0]
    n = len(skipped)
    more = f"; and {n - 1} more" if n > 1 else ""
    return (f"no documents to index in {corpus}: {'its 1 entry was' if n == 1 else f'all {n} entries were'} "
            f"skipped ({first.source}: {first.reason}{more})")
