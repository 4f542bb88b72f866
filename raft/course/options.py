"""The options of `raft course`: one pydantic model, validated once, from which every stage takes its settings.

The defaults are those the shipped course adapter was made with (rag/generation/course_adapter/README.md):
3 questions per chunk, 4 hard distractors, P = 0.8, split 0.7 / 0.1 / 0.2 by chunk, LoRA r 8 on the bundled
base for one epoch at lr 1e-3 with 4 forward passes per step, and the held-out evaluation in the oracle,
distractors-only and retrieved settings.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from raft.evaluate import SETTINGS
from raft.splits import parse_split
from raft.train.config import TrainConfig
from rag.common.options import Options

INSTALL_POLICIES = ("if-better", "always", "never")
COURSE_SPLIT = "0.7,0.1,0.2"
#: The CLI flag of each option whose flag is not its name with dashes.
FLAGS = {"teacher_max_tokens": "--max-new-tokens", "teacher_name": "--model-name", "top_k": "--top-k"}
#: Options a resumed run may change: how the run goes (threads, checkpoints, batch, bootstrap, install), and the
#: teacher's, which `raft generate`'s own run.json holds while the data is made (a server's port may change after).
NOT_IDENTITY = ("workers", "threads", "save_steps", "install", "quiz", "eval_batch_size", "resamples", "teacher",
                "teacher_name", "teacher_max_tokens")


class CourseOptions(Options):
    """Every setting of a `raft course` run (the CLI flags are built from these fields 1:1; `raft course --help`).

    A bad value raises RagError naming the flag, e.g. "--questions must be in [1, 20], got 0".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    FLAGS: ClassVar[dict[str, str]] = FLAGS

    # the teacher and the data (raft generate)
    teacher: str = Field("auto", min_length=1, description=(
        "auto (the 0.5B `teacher` extra when installed, else refuse), an http(s):// URL of an OpenAI-compatible "
        "server, or any model spec `raft generate --model` accepts."))
    teacher_name: str | None = Field(None, description="Model to request from the teacher's server.")
    workers: int = Field(1, ge=1, le=64, description="Parallel requests to a server teacher.")
    questions: int = Field(3, ge=1, le=20, description="Questions per chunk.")
    distractors: int = Field(4, ge=0, le=50, description="Distractor documents per sample.")
    p: float = Field(0.8, ge=0.0, le=1.0, description="Fraction of samples that show the oracle.")
    strategy: Literal["hard", "random", "mixed"] = Field("hard", description="How distractors are drawn.")
    limit: int | None = Field(None, ge=1, description="Use at most N chunks of the course (seeded choice).")
    teacher_max_tokens: int | None = Field(None, ge=1, le=8192, description=(
        "Max new tokens per teacher reply (default: the setting max_new_tokens, 256)."))
    min_chunk_words: int = Field(12, ge=1, le=1000, description="Chunks with fewer words get no question.")
    # the split and the seed, shared by generate, train and evaluate
    split: str = Field(COURSE_SPLIT, description="train,validation,test fractions by chunk.")
    seed: int = Field(0, description="Seed of sampling, split, training and bootstrap.")
    # training (raft train)
    base: str = Field("bundled", min_length=1, description="The student model the adapter is for.")
    epochs: float = Field(1.0, gt=0, le=100, description="Training epochs.")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Peak learning rate.")
    lora_r: int = Field(8, ge=1, le=512, description="LoRA rank.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha (the update is scaled by alpha / r).")
    grad_accum: int = Field(4, ge=1, le=1024, description="Forward passes per optimizer step.")
    max_length: int = Field(1024, ge=32, le=32768, description="Tokens per training sample.")
    max_samples: int | None = Field(None, ge=1, description="Train on at most N samples (seeded choice).")
    max_val_samples: int = Field(32, ge=0, description="Validation samples for the loss before/after (0 = none).")
    save_steps: int = Field(10, ge=1, description="Checkpoint every N optimizer steps.")
    threads: int | None = Field(None, ge=1, le=512, description="Torch threads for training (default: all available cores).")
    # evaluation (raft eval)
    eval_settings: tuple[str, ...] = Field(("oracle", "distractors", "retrieved"), min_length=1, description=(
        "Held-out settings, comma-separated."))
    eval_limit: int | None = Field(None, ge=1, description="Evaluate at most N held-out questions.")
    eval_max_new_tokens: int = Field(192, ge=1, le=8192, description="Max new tokens per evaluated answer.")
    eval_batch_size: int = Field(8, ge=1, le=256, description="Answers generated together in the evaluation.")
    top_k: int | None = Field(None, ge=1, le=100, description=(
        "retrieved setting: passages per question (default: the setting top_k, 5)."))
    resamples: int = Field(2000, ge=100, le=100_000, description="Bootstrap resamples of the 95% intervals.")
    # install
    install: Literal["if-better", "always", "never"] = Field("if-better", description=(
        "if-better: install when the tuned model beats the base (on --quiz when given, else on the held-out "
        "retrieved setting: paired 95% interval above zero) and loses nowhere beyond its interval; always; never."))
    quiz: str | None = Field(None, description=(
        "A multiple-choice quiz people wrote for the course (JSONL: question, options, correct), asked of the base "
        "and the tuned model through the product; when given, it decides the install instead of the held-out split "
        "of the teacher's questions. May be added to a finished run."))

    @field_validator("split")
    @classmethod
    def _split(cls, value: str) -> str:
        parse_split(value)
        return value

    @field_validator("eval_settings")
    @classmethod
    def _settings(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in value if s not in SETTINGS]
        if bad:
            raise ValueError(f"unknown setting {bad[0]!r}: use {', '.join(SETTINGS)}")
        return tuple(dict.fromkeys(value))

    def train_config(self) -> TrainConfig:
        """The `raft train` settings of this run (method raft, float32, batch size 1, LoRA dropout 0.05)."""
        config = TrainConfig(base=self.base, method="raft", epochs=self.epochs, lr=self.lr, lora_r=self.lora_r,
                             lora_alpha=self.lora_alpha, grad_accum=self.grad_accum, max_length=self.max_length,
                             max_samples=self.max_samples, split=self.split, seed=self.seed,
                             max_val_samples=self.max_val_samples, save_steps=self.save_steps, threads=self.threads)
        return config

    def identity(self) -> dict[str, Any]:
        """The options that decide what the run makes from the generated data on (a resumed run must repeat them)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in NOT_IDENTITY}


def make_options(**given: Any) -> CourseOptions:
    """CourseOptions from keyword arguments, None meaning "not given" (the default).

    :raises RagError: one line naming the first bad option, its value and what is allowed (rag.common.options).
    """
    return CourseOptions(**{k: v for k, v in given.items() if v is not None})


__all__ = ["INSTALL_POLICIES", "COURSE_SPLIT", "CourseOptions", "make_options"]
