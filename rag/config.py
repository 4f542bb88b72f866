"""One settings object for the whole product: defaults < config file < env RAG_* < CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from rag.errors import RagError

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

    # index
    faiss_type: Literal["flat", "hnsw", "ivf"] = "flat"

    # retrieval
    mode: Literal["dense", "bm25", "hybrid"] = "dense"  # best recall@5/MRR on eval/dev_questions.jsonl (README)
    top_k: int = Field(default=5, ge=1, le=100)
    rrf_k: int = Field(default=60, ge=1)

    # generation
    model: str = "bundled"  # "bundled", a local model folder, or an OpenAI-compatible base URL
    model_name: str | None = None  # the model to ask for at an OpenAI-compatible server
    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k_sampling: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.1, gt=0.0)
    seed: int | None = None
    # Abstain (without calling the model) when the best passage's cosine is below abstain_threshold and
    # less than abstain_coverage of the question's IDF-weighted terms occur in the corpus (README, Answers).
    abstain_threshold: float = Field(default=0.3, ge=-1.0, le=1.0)
    abstain_coverage: float = Field(default=0.9, ge=0.0, le=1.0)
    max_context_tokens: int = Field(default=1536, ge=128)  # prompt budget: fewer tokens, faster CPU prefill
    condense: Literal["auto", "llm", "concat", "off"] = "auto"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: CLI flags (init) > environment > rag.toml > defaults.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, _config_file()))


def load_settings(**overrides: Any) -> Settings:
    """Build settings from all sources; `overrides` are CLI flags (None means 'not given')."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        raise RagError(f"invalid setting {where}: {err['msg']} (check flags, RAG_* variables and {_config_file()})") from None
    except (OSError, ValueError) as exc:
        raise RagError(f"cannot read config file {_config_file()}: {exc}") from None
