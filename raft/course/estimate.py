"""How long a `raft course` run will take and how much disk it needs, from measured rates (raft.course.probe).

Time: each stage is its units times the rate measured for one unit, plus the model loads measured with them:
generate = chunks left x teacher seconds per chunk / requests served at once, plus the teacher's load;
train = train samples x epochs x seconds per sample, plus the validation loss before and after (a forward
pass, counted as a third of a training sample: the backward pass costs about twice the forward) and one model
load; evaluate = held-out questions x settings x 2 models x seconds per answer, plus two model loads. The
number of samples is the chunks times the samples the probe's chunk gave (the questions asked when it gave
none: an upper bound). The teacher's probe is one chunk alone, so for an in-process teacher, which `raft
generate` runs on 4 chunks at once, the generate time is an upper bound too.

Disk: the dataset (the probe's sample size), `raft train`'s output (two checkpoints of the LoRA weights and
their two AdamW moments, the adapter, the merged model = the base's weights), the staged adapter, the
evaluation, and in the model cache the first use of the tuned model: the base merged with the adapter, and
its ONNX decoder (`DECODER_SHARE`).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raft.splits import parse_split
from raft.train.config import KEEP_CHECKPOINTS
from rag.errors import RagError

#: An ONNX decoder's size as a share of the float32 weights it is built from: fp32 holds the same weights, plus
#: the int8 draft of speculative decoding (about half: its embeddings stay float32); int8 alone ~half; int4 less.
DECODER_SHARE = {"fp32": 1.5, "packed-a8": 1.5, "int8": 0.5, "int4": 0.4, "transformers": 0.0}
#: A forward pass (validation loss) as a share of a training step's forward + backward.
FORWARD_SHARE = 1 / 3
ANSWER_ROW_BYTES = 2048  # one results.jsonl line: question, gold, the answer (<= a few hundred tokens), scores
MODELS_COMPARED = 2  # the base and the tuned model


@dataclass(frozen=True)
class Rates:
    """Measured costs of one unit of each stage, in seconds (wall clock on this machine, as it is loaded now).

    :param teacher_chunk_s: the teacher's questions + answers for one chunk.
    :param teacher_parallel: requests served at once (a server: --workers; an in-process model: 1).
    :param teacher_load_s: the teacher's first reply (loading an in-process model).
    :param train_sample_s: one training sample's forward + backward at the course's sample length.
    :param train_load_s: loading the base model and adding LoRA.
    :param answer_s: one held-out answer of the base model. :param answer_load_s: loading the base to answer.
    :param source: how the rates were measured, said to the user.
    """

    teacher_chunk_s: float
    teacher_parallel: int
    train_sample_s: float
    train_load_s: float
    answer_s: float
    answer_load_s: float
    source: str
    teacher_load_s: float = 0.0


@dataclass(frozen=True)
class Workload:
    """The units of work of a run.

    :param chunks: chunks the teacher gets in all; :param chunks_done: of those, already done (a resumed run).
    :param samples_per_chunk: samples one chunk gives (from the probe).
    :param split: train,validation,test fractions. :param epochs, max_samples, max_val_samples: as trained.
    :param settings: evaluation settings. :param eval_limit: at most this many held-out questions.
    """

    chunks: int
    chunks_done: int
    samples_per_chunk: float
    split: str
    epochs: float
    max_samples: int | None
    max_val_samples: int
    settings: int
    eval_limit: int | None

    def counts(self) -> dict[str, int]:
        """{samples, train, validation, test, answers}: the expected sizes (rounded up)."""
        fractions = parse_split(self.split)
        samples = math.ceil(self.chunks * self.samples_per_chunk)
        train = math.ceil(samples * fractions[0])
        if self.max_samples is not None:
            train = min(train, self.max_samples)
        val = min(self.max_val_samples, math.ceil(samples * fractions[1])) if len(fractions) == 3 else 0
        test = math.ceil(samples * fractions[-1])
        if self.eval_limit is not None:
            test = min(test, self.eval_limit)
        return {"samples": samples, "train": train, "validation": val, "test": test,
                "answers": test * self.settings * MODELS_COMPARED}


def stage_seconds(work: Workload, rates: Rates) -> dict[str, float]:
    """Seconds each stage is expected to take: {"generate", "train", "evaluate"} (see the module's text).

    :returns: seconds per stage, for the work not done yet (chunks already done cost nothing).
    """
    n = work.counts()
    left = max(0, work.chunks - work.chunks_done)
    generate = left * rates.teacher_chunk_s / max(1, rates.teacher_parallel) + (rates.teacher_load_s if left else 0.0)
    train = (n["train"] * work.epochs + 2 * n["validation"] * FORWARD_SHARE) * rates.train_sample_s + rates.train_load_s
    evaluate = n["answers"] * rates.answer_s + MODELS_COMPARED * rates.answer_load_s
    return {"generate": generate, "train": train, "evaluate": evaluate}


@dataclass(frozen=True)
class DiskNeed:
    """Bytes a run will write: in its output folder (`out_bytes`) and in the model cache (`cache_bytes`)."""

    dataset: int
    checkpoints: int
    adapter: int
    merged: int
    evaluation: int
    model_cache: int

    @property
    def out_bytes(self) -> int:
        return self.dataset + self.checkpoints + 2 * self.adapter + self.merged + self.evaluation

    @property
    def cache_bytes(self) -> int:
        return self.model_cache + self.adapter  # + the installed copy of the adapter

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "out_bytes": self.out_bytes, "cache_bytes": self.cache_bytes}


def disk_need(work: Workload, *, sample_bytes: int, adapter_bytes: int, base_bytes: int, decoder: str) -> DiskNeed:
    """The bytes a run writes (see the module's text).

    :param sample_bytes: one dataset.jsonl record (the probe's). :param adapter_bytes: the LoRA weights (float32).
    :param base_bytes: the base model's weights (float32 safetensors). :param decoder: the decoder rag uses
        (rag.generation.decoder.resolve_decoder), which decides what first use adds to the model cache.
    """
    n = work.counts()
    return DiskNeed(dataset=n["samples"] * sample_bytes, checkpoints=KEEP_CHECKPOINTS * 3 * adapter_bytes,
                    adapter=adapter_bytes, merged=base_bytes, evaluation=n["answers"] * ANSWER_ROW_BYTES,
                    model_cache=int(base_bytes * (1 + DECODER_SHARE.get(decoder, 1.5))))


def _existing(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(needs: dict[Path, int]) -> dict[str, int]:
    """Refuse a run whose writes do not fit: needs on one file system are added up and compared with its free space.

    :param needs: folder (it may not exist yet) -> bytes the run will write there.
    :returns: {folder: free bytes} of each folder's file system.
    :raises RagError: naming the folder, what is needed and what is free, when a file system is short.
    """
    by_device: dict[int, tuple[list[Path], int, int]] = {}
    free: dict[str, int] = {}
    for folder, need in needs.items():
        existing = _existing(folder)
        device = existing.stat().st_dev
        space = shutil.disk_usage(existing).free
        folders, total, _ = by_device.get(device, ([], 0, space))
        by_device[device] = ([*folders, Path(folder)], total + need, space)
        free[str(folder)] = space
    for folders, total, space in by_device.values():
        if total > space:
            raise RagError(f"raft course needs ~{human_bytes(total)} of disk in {' and '.join(map(str, folders))} but "
                           f"only {human_bytes(space)} is free: free some space, or use another --out "
                           "(or RAG_CACHE_DIR / RAG_COURSE_ADAPTERS_DIR)")
    return free


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    """Seconds as people read a duration: '45 s', '12 min', '2.5 h'."""
    if s < 90:
        return f"{max(0, round(s))} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"


def plan_record(work: Workload, rates: Rates, need: DiskNeed) -> dict[str, Any]:
    """What the plan stage stores and says: the workload, the rates, the seconds per stage and the disk."""
    seconds = stage_seconds(work, rates)
    return {"workload": {**asdict(work), **work.counts()}, "rates": asdict(rates),
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "total_seconds": round(sum(seconds.values()), 1),
            "disk": need.as_dict()}


__all__ = ["Rates", "Workload", "DiskNeed", "stage_seconds", "disk_need", "check_disk", "human_bytes",
           "human_seconds", "plan_record", "DECODER_SHARE"]
