"""The options of a `raft generate` run (RaftConfig) and the version of what a run writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from rag.common.options import Options

#: Version of what a run writes, in run.json (a run of another format is not resumed by this code).
#: 2: guided answers never quote a sentence the course repeats in 3+ chunks (grounding.boilerplate_sentences).
FORMAT = 2
#: Options that change how a run is carried out, not which samples it plans (not in run.json).
NOT_RECORDED = ("limit", "workers", "batch_size", "progress", "max_failures")


class RaftConfig(Options):
    """What decides the data (stored in run.json) plus how the run is carried out (limit, workers).

    The `raft generate` flags are built from these fields (rag.common.click_options); a bad value raises
    RagError naming the flag, e.g. "--questions must be in [1, 20], got 0".
    """

    FLAGS: ClassVar[dict[str, str]] = {"strategy": "--distractor-strategy", "require_quote": "--allow-no-quote"}

    corpus: str = Field(description="the course folder the chunks come from")
    questions: int = Field(3, ge=1, le=20, description="Questions per chunk.")
    distractors: int = Field(4, ge=0, le=50, description="Distractor documents per sample.")
    p: float = Field(0.8, ge=0.0, le=1.0, description="Fraction of samples that keep the oracle (else one more distractor).")
    strategy: Literal["hard", "random", "mixed"] = Field("hard", description=(
        "hard = nearest non-oracle chunks of the index; random = uniform; mixed = half each."))
    seed: int = Field(0, description="Seed of every sampling decision.")
    min_chunk_words: int = Field(12, ge=1, le=1000, description="Chunks with fewer words get no question.")
    require_quote: bool = Field(True, description="Reject answers that quote nothing from the oracle.")
    answer_mode: Literal["auto", "guided", "free"] = Field("auto", description=(
        "guided: the model picks the oracle sentence to quote, then writes the answer (auto for local models); "
        "free: the teacher writes the whole CoT answer (auto for HTTP)."))
    # not part of run.json: they don't change which samples are planned
    limit: int | None = Field(None, ge=1, description="Use at most N chunks (seeded choice).")
    workers: int = Field(1, ge=1, le=64, description=(
        "Parallel requests (HTTP backends only; the local model runs sequentially)."))
    batch_size: int = Field(4, ge=1, le=64, description=(
        "Chunks generated together by an in-process model (one batched call per step)."))
    progress: bool = Field(True, description="Show a progress bar.")
    max_failures: int = Field(3, ge=1, description="Teacher failures in a row before the run stops.")

    def run_record(self, settings: Any) -> dict[str, Any]:
        """The arguments a resumed run must repeat (run.json).

        :param settings: the run's rag.config.Settings (index, teacher, generation and chunking settings).
        """
        d = {k: v for k, v in self.model_dump().items() if k not in NOT_RECORDED}
        d["corpus"] = str(Path(self.corpus).resolve())
        d.update(format=FORMAT, index_dir=str(Path(settings.index_dir).resolve()), model=settings.model,
                 model_name=settings.model_name, max_new_tokens=settings.max_new_tokens,
                 temperature=settings.temperature, embed_model=settings.embed_model,
                 chunk_tokens=settings.chunk_tokens)
        return d
