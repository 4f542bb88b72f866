"""Short timed probes of what a `raft course` run will do, so its estimate comes from this machine as it is now.

- the teacher: a one-token reply (its load, or the server's first answer), then one real chunk of the course
  through the same ChunkProcessor `raft generate` uses (questions, answers, verification), timed; its samples
  are not kept (the generate stage makes that chunk again);
- training: the base model loaded with LoRA, then two forward + backward passes of one sample shaped like the
  course's (the probe chunk's sample, or the chunk with distractors and a synthetic answer when the teacher
  kept none); the second pass is the rate (the first warms up);
- answers: the base model answering one held-out-shaped question, then two at once; the pair gives the rate,
  the first call the load.

Each model is released after its probe. The probes cost what a few units of work cost; the estimate says so.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft.prompts import ANSWER_MARK, student_messages
from raft.train.config import TrainConfig
from raft.train.data import Example
from rag.errors import RagError


@dataclass(frozen=True)
class TeacherProbe:
    """One chunk through the teacher: seconds, samples kept, questions asked, a kept sample (or None), and the
    seconds of the teacher's first reply before it (loading it, or reaching the server)."""

    seconds: float
    samples: int
    questions: int
    sample: dict[str, Any] | None
    load_s: float = 0.0


@dataclass(frozen=True)
class TrainProbe:
    """Seconds per training sample and per load, the LoRA parameters and the base weights' bytes."""

    sample_s: float
    load_s: float
    trainable_params: int
    base_bytes: int
    tokens: int


@dataclass(frozen=True)
class AnswerProbe:
    """Seconds per held-out answer of the base model, and its load."""

    answer_s: float
    load_s: float


def probe_teacher(index: Any, generator: Any, params: Any, config: Any, chunk: Any) -> TeacherProbe:
    """Time the teacher on one chunk, as `raft generate` would process it.

    :param index: the course's VectorIndex. :param generator: the teacher. :param params: its GenerationParams.
    :param config: the run's raft.synth.run.RaftConfig. :param chunk: the chunk to ask about.
    :raises GeneratorError: the teacher failed (a server that does not answer, a model that cannot load).
    """
    from raft.synth.run import ChunkProcessor
    from rag.generation.base import GenerationParams

    started = time.perf_counter()  # a one-token reply first: loading the model (or its decoder) is not a chunk's cost
    generator.generate_batch([[{"role": "user", "content": "Say OK."}]], GenerationParams(max_new_tokens=1))
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    (result,) = ChunkProcessor(index, generator, params, config)([chunk])
    return TeacherProbe(round(time.perf_counter() - started, 3), len(result.samples),
                        int(result.counts.get("questions") or 0), result.samples[0] if result.samples else None,
                        round(load_s, 3))


def probe_example(probe: TeacherProbe, chunks: list[Any], distractors: int) -> Example:
    """A training/evaluation example shaped like the course's: the probe's sample, else the first chunk with the
    next `distractors` chunks and an answer quoting the chunk's first words (the length of a CoT answer)."""
    if probe.sample is not None:
        s = probe.sample
        return Example(s["id"], list(s["context"]["sentences"]), s["question"], s["cot_answer"])
    if not chunks:
        raise RagError("the course has no chunk to probe with: index a course with some text")
    docs = [c.text for c in chunks[: distractors + 1]]
    quote = " ".join(chunks[0].text.split()[:40])
    return Example("probe", docs, "What does this passage explain?",
                   f"##begin_quote##{quote}##end_quote## This is what it says. {ANSWER_MARK} {quote[:60]}")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def probe_training(config: TrainConfig, example: Example, cache_dir: Path | None = None) -> TrainProbe:
    """Time one training sample's forward + backward with LoRA, with the run's threads, length and dtype.

    :raises RagError: the base cannot be loaded, or the example's question and answer do not fit --max-length.
    """
    import torch

    from raft.train.data import ChatEncoder, collate, loss_sum
    from raft.train.model import add_lora, load_base, resolve_base

    before = torch.get_num_threads()
    torch.set_num_threads(config.threads or _cpus())
    try:
        started = time.perf_counter()
        model_dir, _ = resolve_base(config.base, cache_dir)
        model, tokenizer = load_base(model_dir)
        model, _ = add_lora(model, config)
        load_s = time.perf_counter() - started
        encoded = ChatEncoder(tokenizer, config.max_length, config.seed).encode(example)
        if encoded is None:
            raise RagError(f"a sample of this course does not fit in --max-length {config.max_length} tokens (its "
                           "question and answer alone are longer): raise --max-length")
        model.train()
        times = []
        for _ in range(2):
            t = time.perf_counter()
            loss, _ = loss_sum(model, collate([encoded], tokenizer.pad_token_id), config.dtype)
            loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        base_bytes = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
        del model, loss
        gc.collect()
        return TrainProbe(round(times[-1], 3), round(load_s, 3), trainable, base_bytes, len(encoded.input_ids))
    finally:
        torch.set_num_threads(before)


def probe_answers(spec: str, example: Example, max_new_tokens: int, options: dict[str, Any] | None = None
                  ) -> AnswerProbe:
    """Time the model `spec` answering `example`'s question with its documents (as `raft eval` asks it).

    :param options: the backend's keyword arguments from the run's settings (rag.api.backend_options).

    :raises GeneratorError: the model cannot be loaded.
    """
    from rag.generation.base import GenerationParams
    from rag.generation.factory import get_generator
    from rag.generation.local import release_local_models

    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    messages = student_messages(example.docs, example.question)
    started = time.perf_counter()
    generator = get_generator(spec, **(options or {}))
    generator.generate_batch([messages], params)
    first = time.perf_counter() - started
    t = time.perf_counter()
    generator.generate_batch([messages, student_messages(example.docs[::-1], example.question)], params)
    answer_s = (time.perf_counter() - t) / 2
    local = generator.local
    del generator
    if local:
        release_local_models()
    gc.collect()
    return AnswerProbe(round(answer_s, 3), round(max(0.0, first - answer_s), 3))


__all__ = ["TeacherProbe", "TrainProbe", "AnswerProbe", "probe_teacher", "probe_example", "probe_training",
           "probe_answers"]
