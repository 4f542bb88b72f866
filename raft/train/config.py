"""The settings of a `raft train` run and the file names of its output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from raft.records import DEFAULT_SPLIT
from raft.splits import parse_split
from rag.common.options import Options

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG = "train_config.json"
REPORT = "train_report.json"
LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MERGED = "merged"
PLOT = "loss.png"
Dtype = Literal["float32", "bfloat16"]
Method = Literal["raft", "dsf"]  # raft: documents + question -> CoT answer; dsf: question -> CoT answer, no documents
DTYPES = get_args(Dtype)
METHODS = get_args(Method)
KEEP_CHECKPOINTS = 2
MAX_GRAD_NORM = 1.0
WARMUP_FRACTION = 0.1
_NOT_IDENTITY = ("save_steps", "threads")  # change how the run goes, not the model it makes


class TrainConfig(Options):
    """The settings of one `raft train` run (the CLI flags are built from these fields 1:1).

    method: `raft` trains on the documents + question (RAFT, Zhang et al. 2024); `dsf` is the paper's
    domain-specific fine-tuning baseline (Table 1, "DSF"): the same samples, split, seed and LoRA
    settings, but the question alone in the user turn (no documents), the same CoT answer as target.
    oracle_fraction: None keeps each sample's documents as `raft generate` drew them (its --p); a value P
    re-draws, from the stored documents, which samples show the oracle: exactly round(P * n) samples
    (a seeded choice) do, the others don't (raft datasets and --method raft only).
    distractor_strategy: None keeps the distractors `raft generate` drew (its --distractor-strategy, hard by
    default); "random" re-draws them uniformly from the split's other source chunks
    (raft.train.data.with_random_distractors), the paper's hard-vs-random ablation from one generated dataset.

    Checked by pydantic when made or changed: a bad value raises RagError naming the flag, e.g.
    "--lora-dropout must be in [0, 1), got 1.0".
    """

    base: str = Field("bundled", min_length=1, description=(
        "Base model: bundled, teacher, a model folder, a .gguf file or a `raft train` output."))
    method: Method = Field("raft", description=(
        "raft = documents + question -> answer; dsf = question -> answer without documents (the RAFT paper's "
        "domain-specific fine-tuning baseline), same split, seed and LoRA settings."))
    oracle_fraction: float | None = Field(None, ge=0.0, le=1.0, description=(
        "Re-draw which train samples show the oracle: exactly this fraction do (e.g. 1.0 for the P = 1 "
        "ablation); default: as generated (`raft generate --p`)."))
    distractor_strategy: Literal["random"] | None = Field(None, description=(
        "random = re-draw each sample's distractors uniformly from the split's other source chunks (the "
        "hard-vs-random ablation without a new `raft generate`); default: as generated."))
    epochs: float = Field(1.0, gt=0, description="Training epochs (fractions allowed).")
    # with grad_accum 4: 1 epoch over the course's 631 samples learned the RAFT format (docs/results/raft.md "The whole
    # course"); 2e-4 with grad_accum 8 (40 steps over 320 samples) did not
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(16, gt=0, description="LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    batch_size: int = Field(1, ge=1, description="Samples per forward pass.")
    grad_accum: int = Field(4, ge=1, description="Forward passes per optimizer step.")
    max_length: int = Field(1024, ge=32, description=(
        "Tokens per sample; longer prompts lose distractor documents first, never answer tokens."))
    max_samples: int | None = Field(None, ge=1, description="Train on at most N samples (seeded choice).")
    split: str = Field(DEFAULT_SPLIT, description=(
        "train,validation,test fractions by source chunk, as in `raft export`/`raft eval`."))
    seed: int = Field(0, description="Seed of the split, sample order, LoRA init.")
    dtype: Dtype = Field("float32", description=(
        "bfloat16 = autocast matmuls (master weights stay float32)."))
    max_val_samples: int = Field(32, ge=0, description="Validation samples for the loss before/after training (0 = none).")
    save_steps: int = Field(10, ge=1, description="Checkpoint every N optimizer steps.")
    threads: int | None = Field(None, ge=1, description="Torch threads (default: all available cores).")

    @field_validator("split")
    @classmethod
    def _split(cls, value: str) -> str:
        parse_split(value)
        return value

    @model_validator(mode="after")
    def _documents_need_raft(self) -> TrainConfig:
        if self.oracle_fraction is not None and self.method == "dsf":
            raise ValueError("--oracle-fraction needs --method raft: DSF shows no documents")
        if self.distractor_strategy is not None and self.method == "dsf":
            raise ValueError("--distractor-strategy needs --method raft: DSF shows no documents")
        return self

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained model (a re-run must match them to resume).

        `method`, `oracle_fraction` and `distractor_strategy` are left out at their defaults (raft, None, None), so folders trained
        before they existed still resume; any other value is part of the identity, so a changed method
        or fraction against an existing --out is refused.
        """
        d = self.model_dump()
        for k in _NOT_IDENTITY:
            d.pop(k)
        for k, default in (("method", "raft"), ("oracle_fraction", None), ("distractor_strategy", None)):
            if d[k] == default:
                d.pop(k)
        if d["base"] != "bundled":
            d["base"] = str(Path(d["base"]).expanduser().resolve())
        return d
