"""The index directory: FAISS vectors + chunk store + BM25 + manifest, built incrementally, saved atomically.

Layout: INDEX_DIR/CURRENT names the live generation folder (gen-*); each generation holds
manifest.json, index.faiss, vectors.npy, chunks.jsonl and bm25/. A build writes a new generation,
fsyncs it and then replaces CURRENT in one rename, so a reader never sees half an index and a
killed build leaves the previous one loadable. Nothing is pickled.

Every file is validated on load (a manifest.json that was `[]` or lacked "counts" once crashed
with a traceback): CURRENT, manifest.json against a schema (`validate_manifest`), each chunks.jsonl
record, the vectors' shape and dtype, FAISS's ids against the chunk ids, and BM25's document count. Any
problem is one RagError naming the file and saying to rebuild.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from rag.common.atomic import fsync_dir, write_text_atomic
from rag.common.files import folder_problem
from rag.errors import IndexMismatch, IndexNotFound, RagError
from rag.index.bm25 import BM25Index
from rag.index.embeddings import Embedder
from rag.ingest.chunking import Chunk

FORMAT_VERSION = 1
CURRENT = "CURRENT"
KEEP_GENERATIONS = 2


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (manifest "created" / "updated")."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


REBUILD = "rebuild it with `rag index --rebuild`"


# manifest.json's shape. One set of TypedDicts both types the manifest in code and is the schema
# `validate_manifest` checks with pydantic (strict: no coercion); they change nothing at runtime, so
# manifest.json is written and read byte-for-byte as before. (typing_extensions' TypedDict: pydantic
# needs it before Python 3.12.)
class ManifestEmbedding(TypedDict):
    """The "embedding" block: the model the vectors come from (also normalized, dtype, max_tokens, vector_dtype)."""

    model_id: str  # e.g. "sentence-transformers/all-MiniLM-L6-v2"
    dim: Annotated[int, Field(gt=0)]  # vector length


class ManifestFaiss(TypedDict):
    """The "faiss" block: the index kind, "flat", "hnsw" or "ivf" (also its metric and ids)."""

    type: str


class ManifestFile(TypedDict):
    """One entry of "files" (keyed by the file's path relative to the corpus)."""

    sha256: str  # hex digest of the file's bytes
    chunks: Annotated[int, Field(ge=0)]  # its chunks in the index


class ManifestCounts(TypedDict):
    """The "counts" block: totals over the generation; `files` must equal len(manifest["files"])."""

    files: Annotated[int, Field(ge=0)]
    chunks: Annotated[int, Field(ge=0)]  # = lines of chunks.jsonl = rows of vectors.npy


class ManifestCore(TypedDict):
    """The fields every reader of manifest.json relies on: what `validate_manifest` checks."""

    format_version: int  # FORMAT_VERSION
    embedding: ManifestEmbedding
    chunker: dict[str, Any]  # the chunker's params(): a change re-chunks every file
    faiss: ManifestFaiss
    files: dict[str, ManifestFile]
    counts: ManifestCounts


class Manifest(ManifestCore, total=False):
    """A generation's manifest.json (rag.index.build writes every key; only `ManifestCore`'s are checked)."""

    bm25: dict[str, str]  # library, stemmer, stopwords
    corpus_root: str  # the indexed folder, absolute
    created: str  # ISO 8601 UTC, to the second: the first build of this index
    updated: str  # ISO 8601 UTC, to the second: this generation


_MANIFEST_SCHEMA = TypeAdapter(ManifestCore)


def validate_manifest(manifest: Any, where: Path) -> Manifest:
    """Check a parsed manifest.json: a JSON object of this format version with every field the code reads.

    :param manifest: what json.loads returned.
    :param where: the generation folder, for messages.
    :returns: `manifest`, unchanged (keys beyond `ManifestCore` are kept, not checked).
    :raises RagError: one line naming the first bad field (or another format version) and saying to rebuild.
    """
    if not isinstance(manifest, dict):
        raise RagError(f"index at {where} is damaged: manifest.json holds a JSON {type(manifest).__name__}, "
                       f"not an object; {REBUILD}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RagError(f"index at {where} has format {manifest.get('format_version')}, "
                       f"this version reads {FORMAT_VERSION}: {REBUILD}")
    try:
        checked = _MANIFEST_SCHEMA.validate_python(manifest, strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise RagError(f"index at {where} is damaged: manifest.json field {field!r}: {err['msg']}; {REBUILD}") from None
    if checked["counts"]["files"] != len(checked["files"]):
        raise RagError(f"index at {where} is damaged: manifest.json counts {checked['counts']['files']} files but "
                       f"lists {len(checked['files'])}; {REBUILD}")
    return manifest


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



@dataclass(eq=False)
class VectorIndex:
    """A loaded index generation: chunks in order, their vectors, the FAISS index and the BM25 side.

    :param chunks: the chunks, in the order of the rows of `vectors`.
    :param vectors: float32 (n_chunks, dim), L2-normalised embeddings.
    :param faiss: the FAISS `IndexIDMap2` over `vectors` (ids = chunk ids).
    :param bm25: the BM25 side over the same chunks.
    :param manifest: the generation's manifest (embedder, counts, settings).
    :param path: the generation's folder when loaded from disk.
    """

    chunks: list[Chunk]
    vectors: np.ndarray
    faiss: Any
    bm25: BM25Index
    manifest: Manifest
    path: Path | None = None
    pos_by_id: dict[int, int] = field(init=False, repr=False)  # chunk id -> row

    def __post_init__(self) -> None:
        self.pos_by_id = {c.id: i for i, c in enumerate(self.chunks)}

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
            manifest = validate_manifest(json.loads((gen / "manifest.json").read_text(encoding="utf-8")), gen)
            if embedder is not None:
                check_embedder(manifest, embedder, index_dir)
            chunks = _read_chunks(gen / "chunks.jsonl")
            vectors = np.load(gen / "vectors.npy", allow_pickle=False)
            fidx = faiss.read_index(str(gen / "index.faiss"))
            bm25 = BM25Index.load(gen / "bm25")
        except RagError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
            raise RagError(f"index at {gen} is damaged ({type(exc).__name__}: {str(exc)[:120]}); {REBUILD}") from None
        dim = manifest["embedding"]["dim"]
        n = len(chunks)
        if vectors.dtype != np.float32 or vectors.shape != (n, dim) or fidx.ntotal != n or fidx.d != dim \
                or bm25.n_docs != n or manifest["counts"]["chunks"] != n or len({c.id for c in chunks}) != n \
                or not _faiss_ids_match(fidx, chunks):
            raise RagError(f"index at {gen} is inconsistent (chunks {n}, manifest {manifest['counts']['chunks']}, "
                           f"vectors {vectors.shape} {vectors.dtype}, faiss {fidx.ntotal}, bm25 {bm25.n_docs}); "
                           f"{REBUILD}")
        return cls(chunks, vectors, fidx, bm25, manifest, gen)


def _read_chunks(path: Path) -> list[Chunk]:
    """The chunk records of chunks.jsonl, in order; RagError naming the first bad line."""
    chunks = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise TypeError(f"a JSON {type(rec).__name__}, not an object")
                chunks.append(Chunk.from_record(rec))
            except (ValueError, KeyError, TypeError) as exc:
                raise RagError(f"index at {path.parent} is damaged: chunks.jsonl line {n}: "
                               f"{type(exc).__name__}: {str(exc)[:80]}; {REBUILD}") from None
    return chunks


def _faiss_ids_match(fidx: Any, chunks: list[Chunk]) -> bool:
    """True when the FAISS index is keyed by exactly the chunk ids (IndexIDMap2's id map)."""
    import faiss

    id_map = getattr(fidx, "id_map", None)
    if id_map is None:
        return False
    return set(faiss.vector_to_array(id_map).tolist()) == {c.id for c in chunks}


def check_embedder(manifest: Manifest, embedder: Embedder, index_dir: Path) -> None:
    """Raise IndexMismatch when the index's vectors come from another model than `embedder`."""
    built = manifest.get("embedding", {})
    if built.get("model_id") != embedder.model_id or int(built.get("dim", -1)) != embedder.dim:
        raise IndexMismatch(
            f"index at {index_dir} was built with embedding model {built.get('model_id')!r} "
            f"({built.get('dim')}-d) but {embedder.model_id!r} ({embedder.dim}-d) is configured: "
            f"set RAG_EMBED_MODEL / --embed-model to match, or rebuild with `rag index --rebuild`")


def current_generation(index_dir: Path) -> Path:
    """The folder CURRENT points at.

    :raises IndexNotFound: when there is no built index at `index_dir`.
    :raises RagError: when `index_dir` is not a folder, or CURRENT is unreadable or names no generation.
    """
    problem = folder_problem(index_dir)
    if problem:
        raise RagError(f"index folder {index_dir} {problem}: point --index-dir / RAG_INDEX_DIR at a folder")
    pointer = index_dir / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise IndexNotFound(f"no index at {index_dir}: build it with `rag index corpus/` "
                            "(or point --index-dir / RAG_INDEX_DIR at one)") from None
    except (OSError, ValueError) as exc:
        raise RagError(f"index at {index_dir} is damaged (cannot read CURRENT: {type(exc).__name__}); {REBUILD}") from None
    gen = index_dir / name
    if not name.startswith("gen-") or "/" in name or not gen.is_dir():
        raise RagError(f"index at {index_dir} is damaged (CURRENT names {name[:80]!r}, which is missing); {REBUILD}")
    return gen


def ensure_index_dir(index_dir: Path) -> None:
    """Create the index folder when missing, with a one-line RagError when it cannot be a folder.

    :raises RagError: `index_dir` is a file, a broken link or a symlink loop, or cannot be created.
    """
    problem = folder_problem(index_dir)
    if problem:
        raise RagError(f"index folder {index_dir} {problem}: point --index-dir / RAG_INDEX_DIR at a folder")
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RagError(f"cannot create index folder {index_dir}: {exc.strerror or exc}") from None


def generation_stamp(index_dir: Path) -> str | None:
    """Cheap check for 'has the index changed?': the live generation's name, or None."""
    try:
        return (index_dir / CURRENT).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
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
