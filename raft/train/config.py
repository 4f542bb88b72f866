"""The settings of a `raft train` run and the file names of its output folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raft.records import DEFAULT_SPLIT
from raft.splits import parse_split
from rag.errors import RagError

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG = "train_config.json"
REPORT = "train_report.json"
LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MERGED = "merged"
PLOT = "loss.png"
DTYPES = ("float32", "bfloat16")
METHODS = ("raft", "dsf")  # raft: documents + question -> CoT answer; dsf: question -> CoT answer, no documents
KEEP_CHECKPOINTS = 2
MAX_GRAD_NORM = 1.0
WARMUP_FRACTION = 0.1
_NOT_IDENTITY = ("save_steps", "threads")  # change how the run goes, not the model it makes


@dataclass
class TrainConfig:
    """The settings of one `raft train` run (CLI flags map 1:1).

    method: `raft` trains on the documents + question (RAFT, Zhang et al. 2024); `dsf` is the paper's
    domain-specific fine-tuning baseline (Table 1, "DSF"): the same samples, split, seed and LoRA
    settings, but the question alone in the user turn (no documents), the same CoT answer as target.
    oracle_fraction: None keeps each sample's documents as `raft generate` drew them (its --p); a value P
    re-draws, from the stored documents, which samples show the oracle: exactly round(P * n) samples
    (a seeded choice) do, the others don't (raft datasets and --method raft only).
    distractor_strategy: None keeps the distractors `raft generate` drew (its --distractor-strategy, hard by
    default); "random" re-draws them uniformly from the split's other source chunks
    (raft.train.data.with_random_distractors), the paper's hard-vs-random ablation from one generated dataset.
    """

    base: str = "bundled"
    method: str = "raft"
    oracle_fraction: float | None = None
    distractor_strategy: str | None = None
    epochs: float = 1.0
    lr: float = 1e-3  # with grad_accum 4: 1 epoch over the course's 631 samples learned the RAFT format (README
    # "The whole course"); 2e-4 with grad_accum 8 (40 steps over 320 samples) did not
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    batch_size: int = 1
    grad_accum: int = 4
    max_length: int = 1024
    max_samples: int | None = None
    split: str = DEFAULT_SPLIT
    seed: int = 0
    dtype: str = "float32"
    max_val_samples: int = 32
    save_steps: int = 10
    threads: int | None = None

    def validate(self) -> None:
        """Raise RagError naming the first out-of-range setting."""
        problems = [
            (self.epochs <= 0, f"--epochs must be > 0, got {self.epochs}"),
            (self.lr <= 0, f"--lr must be > 0, got {self.lr}"),
            (self.lora_r < 1, f"--lora-r must be >= 1, got {self.lora_r}"),
            (self.lora_alpha <= 0, f"--lora-alpha must be > 0, got {self.lora_alpha}"),
            (not 0 <= self.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {self.lora_dropout}"),
            (self.batch_size < 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.grad_accum < 1, f"--grad-accum must be >= 1, got {self.grad_accum}"),
            (self.max_length < 32, f"--max-length must be >= 32 tokens, got {self.max_length}"),
            (self.max_samples is not None and self.max_samples < 1,
             f"--max-samples must be >= 1, got {self.max_samples}"),
            (self.method not in METHODS, f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.oracle_fraction is not None and not 0.0 <= self.oracle_fraction <= 1.0,
             f"--oracle-fraction must be in [0, 1], got {self.oracle_fraction}"),
            (self.oracle_fraction is not None and self.method == "dsf",
             "--oracle-fraction needs --method raft: DSF shows no documents"),
            (self.distractor_strategy not in (None, "random"),
             f"--distractor-strategy must be random (or left out: as generated), got {self.distractor_strategy!r}"),
            (self.distractor_strategy is not None and self.method == "dsf",
             "--distractor-strategy needs --method raft: DSF shows no documents"),
            (self.dtype not in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.max_val_samples < 0, f"--max-val-samples must be >= 0, got {self.max_val_samples}"),
            (self.save_steps < 1, f"--save-steps must be >= 1, got {self.save_steps}"),
            (self.threads is not None and self.threads < 1, f"--threads must be >= 1, got {self.threads}"),
        ]
        for bad, message in problems:
            if bad:
                raise RagError(message)
        parse_split(self.split)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained model (a re-run must match them to resume).

        `method`, `oracle_fraction` and `distractor_strategy` are left out at their defaults (raft, None, None), so folders trained
        before they existed still resume; any other value is part of the identity, so a changed method
        or fraction against an existing --out is refused.
        """
        d = asdict(self)
        for k in _NOT_IDENTITY:
            d.pop(k)
        for k, default in (("method", "raft"), ("oracle_fraction", None), ("distractor_strategy", None)):
            if d[k] == default:
                d.pop(k)
        if d["base"] != "bundled":
            d["base"] = str(Path(d["base"]).expanduser().resolve())
        return d
