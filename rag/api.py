"""The library entry points the CLI, the UI and RAFT share: settings in, embedder/index/retriever out."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rag.config import Settings, is_auto_model
from rag.index.build import BuildEngine, BuildReport, ProgressFn, build_index
from rag.index.embeddings import Embedder
from rag.ingest.chunking import Chunker
from rag.retrieval.retriever import Hit, Retriever


@lru_cache(maxsize=4)
def _embedder(model: str, dtype: str, batch_size: int) -> Embedder:
    return Embedder(model, dtype=dtype, batch_size=batch_size)


def get_embedder(settings: Settings) -> Embedder:
    """The configured embedder, one instance per process and configuration."""
    return _embedder(settings.embed_model, settings.embed_dtype, settings.embed_batch_size)


def make_chunker(embedder: Embedder, settings: Settings) -> Chunker:
    """A chunker sized in `embedder`'s own tokens."""
    return Chunker(embedder.tokenizer, embedder.max_tokens, settings.chunk_tokens, settings.chunk_overlap,
                   merge_sections=settings.merge_sections, embed_headings=settings.embed_headings,
                   child_tokens=settings.child_tokens, ocr=settings.ocr)


def index_corpus(corpus: Path, settings: Settings, *, rebuild: bool = False,
                 on_progress: ProgressFn | None = None, engine: BuildEngine | None = None) -> BuildReport:
    """Build or incrementally update the index at settings.index_dir from the files under `corpus`.

    `engine` runs the reading, chunking and embedding: None = this process; a
    `rag.index.ray_engine.RayEngine` = a Ray cluster (`rag index --engine ray`), same index either way.
    Links out of `corpus` are indexed only with `settings.follow_outside_links` (rag.ingest.paths).
    """
    embedder = get_embedder(settings)
    return build_index(Path(corpus), settings.index_dir, embedder, make_chunker(embedder, settings),
                       faiss_type=settings.faiss_type, rebuild=rebuild, on_progress=on_progress, engine=engine,
                       follow_outside_links=settings.follow_outside_links)


def index_report_lines(report: BuildReport) -> list[str]:
    """What an index build did not take as it was, one line each, as `rag index` prints them on stderr:
    each skipped file with its reason, each note (text dropped that no reader sees), each file whose previous
    version was kept. Every command that indexes shows these, so nothing is left out without a word.

    :param report: the build's report.
    :returns: the lines, skips first.
    """
    return ([f"skipped {s.source}: {s.reason}" for s in report.skipped]
            + [f"note {s.source}: {s.reason}" for s in report.notes]
            + [f"kept the previously indexed version of {s}" for s in report.kept_previous])


def open_retriever(settings: Settings) -> Retriever:
    """A retriever over settings.index_dir (raises IndexNotFound / IndexMismatch with a clear message)."""
    return Retriever(settings.index_dir, get_embedder(settings), settings.mode, settings.top_k, settings.rrf_k,
                     dense_weight=settings.dense_weight, collapse_duplicates=settings.collapse_duplicates)


def generation_params(settings: Settings):
    """The generation settings of `settings` as the generator's parameter object."""
    from rag.generation.base import GenerationParams

    params = GenerationParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              top_p=settings.top_p, top_k=settings.top_k_sampling,
                              repetition_penalty=settings.repetition_penalty, seed=settings.seed)
    return params


def http_limits(settings: Settings) -> dict[str, float | int]:
    """The limits of calls to an OpenAI-compatible server in `settings`, as OpenAIGenerator's keyword arguments."""
    return {"read_timeout": settings.model_timeout, "deadline": settings.model_deadline,
            "max_reply_bytes": settings.model_max_reply_bytes}


def backend_options(settings: Settings, spec: str | Path) -> dict[str, object]:
    """The keyword arguments `rag.generation.factory.get_generator(spec, ...)` needs from `settings`: for a
    server, its key (the setting api_key: only for the server `spec` names, which the caller configured) and
    its limits (`http_limits`); for an in-process model, the model cache and the decoder and draft choices.

    :param settings: where the key, cache folder, decoder and draft come from.
    :param spec: the model spec about to be built (a URL, "bundled", a folder ...).
    :returns: keyword arguments of OpenAIGenerator (api_key, read_timeout, deadline, max_reply_bytes) or of
        LocalGenerator (cache_dir, decoder, draft, prefill_dtype).
    :raises GeneratorError: `spec` names no model.
    """
    from rag.generation.factory import resolve_model

    if resolve_model(spec).kind == "http":
        return {"api_key": settings.api_key_value(), **http_limits(settings)}
    return {"cache_dir": settings.cache_dir, "decoder": settings.decoder, "draft": settings.draft,
            "prefill_dtype": settings.prefill_dtype}


@lru_cache(maxsize=4)
def _generator(model: str, model_name: str | None, options: tuple[tuple[str, object], ...] = ()):
    from rag.generation.factory import get_generator

    return get_generator(model, model_name=model_name, **dict(options))


def _indexed_files(index_dir: Path, generation: str) -> dict[str, str] | None:
    """file name -> SHA-256 of the files of the index generation `generation`; None when unreadable (a missing or
    damaged index is reported by what needs it)."""
    import json

    from rag.errors import RagError
    from rag.index.store import validate_manifest

    gen = Path(index_dir) / generation
    try:
        manifest = validate_manifest(json.loads((gen / "manifest.json").read_text(encoding="utf-8")), gen)
    except (RagError, OSError, ValueError):
        return None
    return {name: f["sha256"] for name, f in manifest["files"].items()}


def course_adapter_applies(index_dir: Path) -> bool:
    """Whether the shipped course's RAFT adapter fits the index at `index_dir`: it is installed and at least
    rag.generation.adapter.COURSE_SHARE of the indexed files (by SHA-256) are files of the course it was
    tuned on. False when either is missing or unreadable (a missing index is reported by what needs it).
    Decided once per index generation (its name is read from CURRENT; the manifest only when it changed)."""
    from rag.generation.adapter import COURSE_ADAPTER
    from rag.index.store import generation_stamp

    return _course_adapter_applies(str(Path(index_dir).resolve()), generation_stamp(Path(index_dir)), COURSE_ADAPTER)


@lru_cache(maxsize=8)
def _course_adapter_applies(index_dir: str, generation: str | None, adapter: Path) -> bool:
    from rag.errors import RagError
    from rag.generation.adapter import COURSE_SHARE, course_share, is_adapter_folder, read_adapter_info

    if generation is None or not is_adapter_folder(adapter):
        return False
    files = _indexed_files(Path(index_dir), generation)
    try:
        return files is not None and course_share(read_adapter_info(adapter), files) >= COURSE_SHARE
    except RagError:  # an unreadable shipped adapter: the base model, as when it is missing
        return False


def course_model(index_dir: Path, adapters_dir: Path | None = None, cache_dir: Path | None = None) -> str | None:
    """The course adapter `model = "auto"` loads for the index at `index_dir`, as a model spec: the folder of the
    adapter `raft course` installed for its course, "bundled-raft" for the shipped course, or None.

    The course is recognised by content (rag.generation.course_registry.match_course: at least COURSE_SHARE of
    the indexed files, by SHA-256); decided once per index generation and registry version.

    :param adapters_dir: the registry folder (Settings.course_adapters_dir; None = the model cache's).
    :param cache_dir: the model cache (Settings.cache_dir; None = rag.generation.models.default_cache_dir()).
    :raises RagError: the registry of installed course adapters is damaged (naming the file and what to do).
    """
    from rag.generation.adapter import COURSE_ADAPTER
    from rag.generation.course_registry import REGISTRY, registry_dir
    from rag.index.store import generation_stamp

    root = registry_dir(adapters_dir, cache_dir)
    try:
        st = (root / REGISTRY).stat()
        registry = (st.st_size, st.st_mtime_ns)
    except OSError:
        registry = None
    return _course_model(str(Path(index_dir).resolve()), generation_stamp(Path(index_dir)), str(root), registry,
                         COURSE_ADAPTER)


@lru_cache(maxsize=8)
def _course_model(index_dir: str, generation: str | None, root: str, registry: tuple[int, int] | None,
                  shipped_folder: Path) -> str | None:
    from rag.errors import RagError
    from rag.generation.adapter import is_adapter_folder, read_adapter_info
    from rag.generation.course_registry import match_course
    from rag.generation.spec import COURSE_SPEC

    if generation is None:
        return None
    files = _indexed_files(Path(index_dir), generation)
    if files is None:
        return None
    if registry is None:  # nothing installed: the shipped adapter alone (its own rule)
        return COURSE_SPEC if _course_adapter_applies(index_dir, generation, shipped_folder) else None
    try:
        shipped = read_adapter_info(shipped_folder) if is_adapter_folder(shipped_folder) else None
    except RagError:  # an unreadable shipped adapter: as when it is missing
        shipped = None
    chosen = match_course(Path(root), files, shipped)
    if chosen is None:
        return None
    return COURSE_SPEC if chosen == "shipped" else str(chosen.folder(Path(root)))


def effective_model(settings: Settings) -> str:
    """The model spec to load: `settings.model`, with the default "auto" made concrete: the bundled model with
    the RAFT adapter of the index's course (`course_model`: one `raft course` installed, or "bundled-raft", the
    shipped course's) when the index is such a course, else "bundled" (the base; also `--model bundled-base`).

    :raises RagError: the registry of installed course adapters is damaged.
    """
    if not is_auto_model(settings.model):
        return settings.model
    return course_model(settings.index_dir, settings.course_adapters_dir, settings.cache_dir) or "bundled"


def get_generator(settings: Settings):
    """The configured language model backend (`effective_model`), loaded once per process and options
    (`backend_options`: the key and limits of a server, the cache, decoder and draft of a local model)."""
    model = effective_model(settings)
    return _generator(model, settings.model_name, tuple(backend_options(settings, model).items()))


def make_pipeline(settings: Settings, retriever: Retriever | None = None, generator=None):
    """The RAG loop wired from settings (pass a retriever/generator to share already-loaded ones)."""
    from rag.answering.pipeline import RagPipeline

    return RagPipeline(retriever or open_retriever(settings), generator or get_generator(settings),
                       top_k=settings.top_k, mode=settings.mode, params=generation_params(settings),
                       abstain_threshold=settings.abstain_threshold,
                       abstain_coverage=settings.abstain_coverage,
                       max_context_tokens=settings.max_context_tokens, condense_mode=settings.condense,
                       answer_mode=settings.answer_mode, retriever_weight=settings.quote_retriever_weight,
                       choice_retriever_weight=settings.choice_retriever_weight)


def search(query: str, settings: Settings, k: int | None = None, mode: str | None = None) -> list[Hit]:
    """One-shot search; for many queries keep the Retriever from open_retriever()."""
    return open_retriever(settings).search(query, k, mode)
