"""One settings object for the whole product: defaults < config file < env RAG_* < CLI flags.

The config file (rag.toml, or $RAG_CONFIG) is read with the same text reader as every other file a command
reads (UTF-8, or UTF-16/32 with a BOM, one-line errors), and its keys are checked: a misspelt key is an
error naming it, not a setting silently ignored. Paths are checked when the settings are made, so an
index_dir that is a file (say RAG_INDEX_DIR=notes.txt) fails at once with one line, not with a traceback
deep in `rag index` or `rag search`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from rag.common.files import folder_problem
from rag.common.text import read_text
from rag.errors import RagError
from rag.retrieval.fusion import DENSE_WEIGHT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pydantic-settings depends on tomli there)
    import tomli as tomllib

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The checkout the package runs from (editable install), else the current directory."""
    repo = PACKAGE_DIR.parent
    if (repo / "pyproject.toml").is_file() and (repo / "rag").is_dir():
        return repo
    return Path.cwd()


def _config_file() -> Path:
    explicit = os.environ.get("RAG_CONFIG")
    return Path(explicit) if explicit else project_root() / "rag.toml"


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The settings in the config file (rag.toml or $RAG_CONFIG), checked against the known setting names.

    :param path: the file (default: $RAG_CONFIG, else rag.toml in the project).
    :returns: its table; {} when the default rag.toml does not exist.
    :raises RagError: $RAG_CONFIG names a missing file; the file cannot be read or decoded, is not valid
        TOML, or has a key that is no setting.
    """
    explicit = path is not None or bool(os.environ.get("RAG_CONFIG"))
    path = Path(path) if path is not None else _config_file()
    if not explicit and not os.path.lexists(path):
        return {}
    if explicit and not os.path.lexists(path):
        raise RagError(f"config file {path} (RAG_CONFIG) not found: fix the path or unset RAG_CONFIG")
    try:
        data = tomllib.loads(read_text(path, "config file"))
    except tomllib.TOMLDecodeError as exc:
        raise RagError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise RagError(f"config file {path}: unknown setting {unknown[0]!r}; the settings are "
                       + ", ".join(Settings.model_fields))
    return data


#: The environment variables read outside Settings, each with why it is not a setting: they steer the process
#: (a library's threads, its telemetry, its network use) or are read by a library itself, not by this product.
#: Everything else this product reads from the environment is a Settings field (RAG_<FIELD>).
PROCESS_KNOBS: dict[str, str] = {
    "RAG_CONFIG": "which config file to read (rag.config): it has to be known before the settings are read.",
    "OPENAI_API_KEY": "the fallback of RAG_API_KEY (Settings.api_key), read here in rag.config.",
    "HF_HUB_OFFLINE": "the Hugging Face libraries' own switch; rag.index.embeddings sets it (default on) before "
                      "loading the embedder and reads it to decide whether a missing model may be downloaded.",
    "TRANSFORMERS_OFFLINE": "set with HF_HUB_OFFLINE in the environment of the ONNX decoder build subprocess "
                            "(rag.generation.decoder.build), so that build never reaches the network.",
    "OMP_WAIT_POLICY": "OpenMP's idle-thread policy; `raft train` / `raft course` set PASSIVE (unless given) "
                       "before torch loads, so idle threads do not spin on the shared cores.",
    "OMP_THREAD_LIMIT": "set to 1 in the environment of each Tesseract subprocess (rag.ingest.ocr): pages are "
                        "read in parallel, one thread each.",
    "OPENAI_CUSTOM_HEADERS": "read by the `openai` client; rag.generation.http reads it only to remove those "
                             "headers from every request, so nothing but the configured key is sent.",
    "RAY_USAGE_STATS_ENABLED": "Ray's telemetry; rag.index.ray_engine turns it off (unless given) before Ray starts.",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "Ray's switch for clusters on Windows/macOS; rag.index.ray_engine sets "
                                         "it (unless given) before Ray's first import for a one-machine cluster.",
}

AUTO_MODEL = "auto"  # the default `model`: made concrete per index by rag.api.effective_model


def is_auto_model(model: str) -> bool:
    """Whether a `model` setting is the default "auto" (any case, surrounding spaces ignored)."""
    return model.strip().lower() == AUTO_MODEL


class Settings(BaseSettings):
    """Every tunable of indexing, retrieval and generation, with the defaults the product ships."""

    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore", validate_assignment=True)

    index_dir: Path = Field(default_factory=lambda: project_root() / "data" / "index")
    corpus_dir: Path = Field(default_factory=lambda: project_root() / "corpus")

    # embedding
    embed_model: str = "bundled"
    embed_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    embed_batch_size: int = Field(default=16, ge=1)

    # chunking, measured in embedder tokens
    chunk_tokens: int = Field(default=256, ge=16)  # capped at the embedder window minus the heading path
    chunk_overlap: int = Field(default=32, ge=0)
    merge_sections: bool = True  # pack small sections into one passage (docs/results/retrieval.md)
    embed_headings: bool = False  # prepend the heading path to what is embedded (docs/results/retrieval.md)
    child_tokens: int = Field(default=128, ge=0)  # embed child windows this long, return their passage; 0 = off

    # index
    faiss_type: Literal["flat", "hnsw", "ivf"] = "flat"
    follow_outside_links: bool = Field(False, description=(
        "Index links in the course folder that lead outside it (off: they are skipped with their reason; "
        "rag.ingest.paths). `rag index --follow-outside-links`, RAG_FOLLOW_OUTSIDE_LINKS."))
    ocr: bool = Field(False, description=(
        "Read scanned PDF pages with Tesseract (Debian's tesseract-ocr; rag.ingest.ocr); off: a scanned PDF "
        "is skipped with its reason. `rag index --ocr`, RAG_OCR."))

    # retrieval
    mode: Literal["dense", "bm25", "hybrid"] = Field("hybrid", description=(
        "Retrieval mode (hybrid won eval/retrieval_benchmark.py: docs/results/retrieval.md). RAG_MODE."))
    top_k: int = Field(default=5, ge=1, le=100, description="Passages to retrieve. RAG_TOP_K.")
    rrf_k: int = Field(default=60, ge=1)
    # hybrid: dense ranking's weight, BM25 gets the rest (0.65 won the independent evaluation over 0.8:
    # docs/results/retrieval.md; the value lives in rag.retrieval.fusion)
    dense_weight: float = Field(default=DENSE_WEIGHT, ge=0.0, le=1.0)
    collapse_duplicates: bool = True  # drop passages near-identical to a better-ranked one

    # generation
    # "auto": the bundled model, with the RAFT adapter of the index's course when one is installed (`raft course`)
    # or shipped (rag.api.effective_model); "bundled-base", "bundled-raft", "teacher", a model or adapter folder, or a URL
    model: str = Field(AUTO_MODEL, description=(
        "auto (default: the bundled model, with the course's RAFT adapter when the index is such a course), "
        "bundled-base, bundled-raft, teacher, a model folder, a .gguf file, a `raft train` output, or an "
        "OpenAI-compatible base URL. RAG_MODEL."))
    model_name: str | None = Field(None, description=(
        "Model to request from an OpenAI-compatible server (key: the setting api_key). RAG_MODEL_NAME."))
    course_adapters_dir: Path | None = Field(None, description=(
        "The folder of the course adapters `raft course` installs, which `model = auto` picks by the index's "
        "content (rag.generation.course_registry); unset: course-adapters/ in the model cache. "
        "RAG_COURSE_ADAPTERS_DIR."))
    max_new_tokens: int = Field(default=256, ge=1, le=8192, description="Max new tokens. RAG_MAX_NEW_TOKENS.")
    temperature: float = Field(default=0.0, ge=0.0, le=5.0, description="0 = greedy; > 0 samples. RAG_TEMPERATURE.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass. RAG_TOP_P.")
    top_k_sampling: int = Field(default=0, ge=0, description=(
        "Sample from the k likeliest tokens (0 = off). RAG_TOP_K_SAMPLING."))
    repetition_penalty: float = Field(default=1.1, gt=0.0, description=(
        "> 1 discourages repeats. RAG_REPETITION_PENALTY."))
    seed: int | None = Field(None, description="Seed for reproducible sampling. RAG_SEED.")
    # Abstain (without calling the model) when the best passage's cosine is below abstain_threshold and
    # less than abstain_coverage of the question's IDF-weighted terms occur in the corpus (docs/guide/answers.md).
    abstain_threshold: float = Field(default=0.3, ge=-1.0, le=1.0)
    abstain_coverage: float = Field(default=0.9, ge=0.0, le=1.0)
    max_context_tokens: int = Field(default=1536, ge=128)  # prompt budget: fewer tokens, faster CPU prefill
    condense: Literal["auto", "llm", "concat", "off"] = "auto"
    # grounded: quote the supporting sentence first, then a short answer (docs/guide/answers.md); auto = grounded
    # for in-process models, free for HTTP ones
    answer_mode: Literal["auto", "grounded", "free"] = "auto"
    quote_retriever_weight: float = Field(default=0.5, ge=0.0, le=1.0)  # retriever's share in the quote choice
    # the options' support in the passages against the model's scores, for a question that lists options
    choice_retriever_weight: float = Field(default=1.0, ge=0.0, le=1.0)
    # limits of a call to an OpenAI-compatible model server (rag ask/serve, the app, raft generate's teacher)
    model_timeout: float = Field(default=120.0, gt=0.0, le=3600.0, description=(
        "Seconds each try waits for a model server's reply to start and between its streamed pieces."))
    model_deadline: float = Field(default=300.0, gt=0.0, le=86400.0, description=(
        "Seconds one call to a model server may take in all: every try, the waits between them and the stream."))
    model_max_reply_bytes: int = Field(default=65536, ge=1024, le=64 * 1024 * 1024, description=(
        "The most text (UTF-8 bytes) one reply of a model server may hold; a longer one is cut off and rejected."))

    # how the in-process model runs (rag.generation.local, rag.generation.decoder)
    decoder: Literal["auto", "fp32", "packed-a8", "int8", "int4", "transformers"] = Field("auto", description=(
        "Who writes an in-process model's answer after transformers has read the prompt: \"auto\" "
        "(rag.generation.decoder.DEFAULT_DECODER, falling back to transformers for a model the ONNX builder does not "
        "know), \"fp32\" / \"int8\" / \"int4\" (an ONNX Runtime decoder of that precision, built once into the "
        "model cache; int8/int4 change the greedy text), \"packed-a8\" (the fp32 decoder's exact 4-bit blocks "
        "against 8-bit activations, as llama.cpp computes a 4-bit GGUF) or "
        "\"transformers\" (plain `model.generate`, one answer at a time). RAG_DECODER."))
    draft: Literal["auto", "int8", "int4", "lookup", "off"] = Field("auto", description=(
        "The proposer of speculative decoding under an ONNX decoder: \"auto\" (the int8 draft model, none for a "
        "decoder of packed 4-bit blocks), \"int8\" / \"int4\" (a draft model, built once), \"lookup\" (prompt "
        "lookup only) or \"off\" (one token per pass). RAG_DRAFT."))
    prefill_dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "The precision an in-process model reads a prompt in (the passages of an answer, quote candidates, "
        "multiple-choice options) before the decoder writes: \"auto\" (rag.generation.models.AUTO_PREFILL_DTYPE on a "
        "CPU with native bf16, else float32), \"float32\", or \"bfloat16\" (CPU autocast over the float32 "
        "weights: about half the time on an AVX512-BF16 CPU; slower where bf16 is emulated). The transformers decoder "
        "reads an answer's own prompt in float32 (`model.generate`). RAG_PREFILL_DTYPE."))
    cache_dir: Path | None = Field(None, description=(
        "The model cache: converted GGUF models, ONNX decoders, merged adapters, the assembled teacher and the "
        "course adapters `raft course` installs; unset: ~/.cache/course-rag/models. RAG_CACHE_DIR."))
    api_key: SecretStr | None = Field(None, description=(
        "The bearer token sent to the OpenAI-compatible server `model` names, and to no other address (the app "
        "sends no key to the other servers of ui_backend_urls). RAG_API_KEY, else OPENAI_API_KEY; unset: no "
        "Authorization header."))

    # access (docs/guide/serve.md and docs/guide/chat.md)
    admin_secret: SecretStr | None = None  # unlocks adding/removing documents in the app; unset: nobody can
    ui_backend_urls: Annotated[list[str], NoDecode] = []  # servers an app visitor may pick besides `model`
    server_api_key: SecretStr | None = None  # `rag serve` wants `Authorization: Bearer <key>` when set
    cors_origins: Annotated[list[str], NoDecode] = []  # browser origins allowed to call `rag serve`
    history_path: Path | None = Field(None, description=(
        "The app's SQLite file of conversations and answer feedback (RAG_HISTORY_PATH); unset: chats.sqlite3 "
        "next to the index folder (data/chats.sqlite3 by default). `rag feedback export` reads it too."))

    @field_validator("ui_backend_urls", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """A list, or one string of comma-separated items (how an environment variable gives it)."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("ui_backend_urls")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"https?://[^\s/]+", url, re.I):
                raise ValueError(f"{url!r} is not an http(s):// URL of an OpenAI-compatible server")
        return [url.rstrip("/") for url in value]

    @field_validator("decoder", "draft", "prefill_dtype", mode="before")
    @classmethod
    def _choice_any_case(cls, value: Any) -> Any:
        """A choice in any case with surrounding spaces; an empty one (RAG_DECODER=) is "auto"."""
        if isinstance(value, str):
            return value.strip().lower() or "auto"
        return value

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _empty_cache_dir_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir_is_a_folder(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        problem = folder_problem(value)
        if problem:
            raise ValueError(f"{value} {problem}; point it at a folder (it is created when missing)")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value else value

    def api_key_value(self) -> str:
        """The configured API key as text ("" when none: the HTTP backend then sends no Authorization)."""
        return self.api_key.get_secret_value() if self.api_key is not None else ""

    @field_validator("history_path")
    @classmethod
    def _history_path_is_a_file(cls, value: Path | None) -> Path | None:
        if value is not None and value.is_dir():
            raise ValueError(f"{value} is a folder; point it at a file (e.g. {value / 'chats.sqlite3'})")
        return value

    @field_validator("index_dir")
    @classmethod
    def _index_dir_is_a_folder(cls, value: Path) -> Path:
        problem = folder_problem(value)
        if problem:
            raise ValueError(f"{value} {problem}; point it at a folder (it is created when missing)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: CLI flags (init) > environment > rag.toml > defaults. OPENAI_API_KEY is the key when
        # RAG_API_KEY is unset or empty (the name every OpenAI-compatible client reads).
        openai_key = None if os.environ.get("RAG_API_KEY") else environment_api_key()
        fallback = {"api_key": openai_key} if openai_key is not None else {}
        return (init_settings, InitSettingsSource(settings_cls, fallback), env_settings,
                InitSettingsSource(settings_cls, read_config_file()))


def environment_api_key() -> SecretStr | None:
    """The API key the environment holds: RAG_API_KEY, else OPENAI_API_KEY (None when both are unset or empty).

    For a process that gets its other settings from elsewhere (a Ray worker of `raft generate` takes the
    driver's, but never its secrets: the key comes from the worker's own environment).
    """
    key = os.environ.get("RAG_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return SecretStr(key) if key else None


def _origin(name: str, flags: dict[str, Any]) -> str:
    """Where the value of setting `name` came from, for an error message."""
    if name in flags:
        return "the command-line flag"
    env = f"RAG_{name.upper()}"
    if any(k.upper() == env for k in os.environ):
        return env
    if name in read_config_file():
        return f"config file {_config_file()}"
    return "the default"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from all sources.

    :param overrides: CLI flags (None means 'not given').
    :raises RagError: one line naming the setting, where its bad value came from and why it is bad; or
        the config file's problem (see `read_config_file`).
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        origin = _origin(where, given) if err["loc"] else f"flags, RAG_* variables and {_config_file()}"
        raise RagError(f"invalid setting {where} (from {origin}): {msg}") from None
