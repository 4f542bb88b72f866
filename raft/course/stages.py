"""The stages of `raft course`, as data: plan -> generate -> train -> evaluate -> quiz -> install (`STAGES`).

Each stage is a function of the run (raft.course.context.CourseRun) and the state so far, returning its result
(a JSON-able dict the state file keeps). The work stages call the library behind the four `raft` commands
(raft.synth.run.run, raft.train.loop.train, raft.evaluate.run_eval) with their own bars off, and each of them
resumes its own folder, so a stage interrupted anywhere is simply run again. `still_valid` lets a finished
stage be redone when what it did is gone or was asked differently (the quiz, after `--quiz` changed; the install,
after `--install` or the quiz changed or the registry lost it).
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raft.course.context import CourseRun
from raft.course.estimate import Rates, Workload, check_disk, disk_need, plan_record
from raft.course.probe import probe_answers, probe_example, probe_teacher, probe_training
from raft.course.progress import CourseEvent
from raft.course.quiz import ask_quiz, quiz_digest, quiz_still_valid
from raft.course.state import CourseState
from raft.course.verdict import decide, evaluation_brief
from raft.records import PROGRESS
from rag.errors import GeneratorError, RagError


def chunks_done(run: CourseRun, chunk_ids: set[int]) -> int:
    """Chunks of `chunk_ids` the generate stage has finished (its progress.jsonl; damaged lines not counted)."""
    from rag.common.runfolder import scan_jsonl

    return len({r.get("chunk_id") for r in scan_jsonl(run.data / PROGRESS).rows} & chunk_ids)


# --------------------------------------------------------------------------------------------- plan


def plan(run: CourseRun, state: CourseState) -> dict[str, Any]:
    """Probe the teacher, a training step and the base's answers; estimate the time and disk; refuse a run that
    does not fit on disk. Returns the plan record (raft.course.estimate.plan_record) with the course and probes."""
    from rag.api import backend_options, generation_params
    from rag.generation.course_registry import course_fingerprint
    from rag.generation.decoder import resolve_decoder

    o = run.options
    chunks = run.chunks()
    if not chunks:
        raise RagError(f"no chunk of {run.corpus} has {o.min_chunk_words} words or more: RAFT needs some text")
    if len(run.index()) < 2:
        raise RagError(f"the index of {run.corpus} has {len(run.index())} chunk(s): RAFT needs an oracle and distractors")
    run.note(f"measuring: one chunk through the teacher ({run.teacher.description}), a training step and the "
             "base model's answers")
    try:
        teacher = probe_teacher(run.index(), run.teacher_generator(), generation_params(run.settings),
                                run.raft_config(), chunks[0])
    except GeneratorError as e:
        raise RagError(f"the teacher failed its first chunk: {e}") from None
    example = probe_example(teacher, chunks, o.distractors)
    training = probe_training(o.train_config(), example, run.settings.cache_dir)
    answers = probe_answers(o.base, example, o.eval_max_new_tokens, backend_options(run.settings, o.base))
    rates = Rates(teacher_chunk_s=teacher.seconds,
                  teacher_parallel=o.workers if run.teacher_generator().parallel_requests else 1,
                  train_sample_s=training.sample_s, train_load_s=training.load_s, answer_s=answers.answer_s,
                  answer_load_s=answers.load_s, teacher_load_s=teacher.load_s,
                  source="a timed probe of this run (one chunk, one training sample, three answers)")
    ids = {c.id for c in chunks}
    work = Workload(chunks=len(chunks), chunks_done=chunks_done(run, ids),
                    samples_per_chunk=float(teacher.samples or o.questions), split=o.split, epochs=o.epochs,
                    max_samples=o.max_samples, max_val_samples=o.max_val_samples, settings=len(o.eval_settings),
                    eval_limit=o.eval_limit)
    sample_bytes = len(json.dumps(teacher.sample, ensure_ascii=False).encode()) if teacher.sample else \
        2 * sum(len(d.encode()) for d in example.docs) + 1024  # a record holds its documents twice
    need = disk_need(work, sample_bytes=sample_bytes, adapter_bytes=4 * training.trainable_params,
                     base_bytes=training.base_bytes, decoder=resolve_decoder(run.settings.decoder))
    from rag.generation.models import default_cache_dir

    cache = run.settings.cache_dir or default_cache_dir()
    free = check_disk({run.out: need.out_bytes, cache: need.model_cache, run.registry: need.adapter})
    return {**plan_record(work, rates, need), "free": free, "course_files": run.course_files,
            "course_id": course_fingerprint(run.course_files), "chunks": len(chunks),
            "teacher": {"spec": run.teacher.spec, "kind": run.teacher.kind, "description": run.teacher.description},
            "probe": {"teacher_samples": teacher.samples, "teacher_questions": teacher.questions,
                      "train_tokens": training.tokens, "trainable_params": training.trainable_params}}


# ----------------------------------------------------------------------------------------- generate


def generate(run: CourseRun, state: CourseState) -> dict[str, Any]:
    """`raft generate` into OUT/data with the run's teacher (resumed where it stopped); the teacher is released after."""
    from raft.synth.run import run as generate_dataset

    chunks = run.chunks()
    total, done = len(chunks), chunks_done(run, {c.id for c in chunks})
    run.emit(CourseEvent("start", "generate", done=done, total=total, unit="chunk"))
    count = [done]

    def on_chunk(_result: Any) -> None:
        count[0] += 1
        run.emit(CourseEvent("advance", "generate", done=min(count[0], total), total=total, unit="chunk"))

    try:
        stats = generate_dataset(run.corpus, run.data, run.settings, run.raft_config(),
                                 generator=run.teacher_generator(), index_first=False, on_chunk=on_chunk)
    finally:
        run.release_teacher()
    for warning in stats["warnings"]:
        run.note(f"warning: {warning}")
    this = stats["this_run"]
    return {"samples": stats["samples"], "chunks_done": stats["chunks_done"], "kept_fraction": stats["kept_fraction"],
            "generator_model": stats["generator_model"], "seconds_this_session": this["seconds"],
            "chunks_this_session": this["chunks"], "failed_chunks": this["failed_chunks"]}


# -------------------------------------------------------------------------------------------- train


def _steps(run: CourseRun) -> int:
    """The optimizer steps `raft train` will take (as raft.train.loop counts them, before too-long samples are skipped)."""
    from raft.train.data import load_examples

    config = run.options.train_config()
    train_ex, _, _ = load_examples(run.data, config)
    per_epoch = math.ceil(len(train_ex) / config.batch_size)
    return math.ceil(max(1, math.ceil(config.epochs * per_epoch)) / config.grad_accum)


def stage_adapter(run: CourseRun, report: dict[str, Any]) -> None:
    """Write OUT/adapter: `raft train`'s adapter with the course's files recorded (what `model = auto` matches),
    replaced whole (raft.train.checkpoints.replace_dir), so it is evaluated and installed byte for byte."""
    from raft.train.checkpoints import replace_dir
    from raft.train.config import ADAPTER
    from rag.common.atomic import write_json_atomic
    from rag.generation.adapter import ADAPTER_INFO, PEFT_CONFIG, PEFT_WEIGHTS, read_adapter_info

    source = run.train_dir / ADAPTER
    for left in run.out.glob(f".{run.adapter.name}.tmp-*"):  # left by a run killed here
        shutil.rmtree(left, ignore_errors=True)
    tmp = run.out / f".{run.adapter.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        for name in (PEFT_CONFIG, PEFT_WEIGHTS):
            shutil.copyfile(source / name, tmp / name)
        write_json_atomic(tmp / ADAPTER_INFO, {
            "base": read_adapter_info(source).base, "prompt_format": "raft", "course_files": run.course_files,
            "method": "raft", "written_by": "raft course", "course": run.corpus.name,
            "training": {k: report.get(k) for k in ("args", "samples", "steps", "seconds", "val_loss_before",
                                                    "val_loss_after", "initial_loss", "final_loss", "versions")}})
        replace_dir(tmp, run.adapter)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train(run: CourseRun, state: CourseState) -> dict[str, Any]:
    """`raft train` on OUT/data into OUT/train (resumed from its newest checkpoint), then the course adapter."""
    from raft.train.loop import train as train_model

    total = _steps(run)
    run.emit(CourseEvent("start", "train", done=0, total=total, unit="step"))
    report = train_model(run.data, run.train_dir, run.options.train_config(), progress=False, command=run.command,
                         cache_dir=run.settings.cache_dir,
                         on_step=lambda row: run.emit(CourseEvent("advance", "train", done=row["step"], total=total,
                                                                  unit="step")))
    stage_adapter(run, report)
    return {"steps": report["steps"], "samples": report["samples"], "seconds": report["seconds"],
            "seconds_per_sample": report["seconds_per_sample"], "val_loss_before": report["val_loss_before"],
            "val_loss_after": report["val_loss_after"], "resumed_from_step": report.get("resumed_from_step"),
            "adapter": str(run.adapter)}


# ----------------------------------------------------------------------------------------- evaluate


def evaluate(run: CourseRun, state: CourseState) -> dict[str, Any]:
    """`raft eval` of the base against the course adapter on the held-out split (OUT/eval, resumed), with 95%
    bootstrap intervals and the paired comparison; returns the brief (raft.course.verdict.evaluation_brief)."""
    from raft.evaluate import run_eval

    o = run.options
    base, tuned = o.base, str(run.adapter)

    started = [False]

    def on_progress(done: int, total: int) -> None:  # first called with the answers already on disk
        run.emit(CourseEvent("advance" if started[0] else "start", "evaluate", done=done, total=total, unit="answer"))
        started[0] = True

    run.emit(CourseEvent("start", "evaluate", done=0, total=0, unit="answer"))  # loading the questions, retrieving
    summary = run_eval(run.data, [base, tuned], run.eval_dir, split=o.split, seed=o.seed, limit=o.eval_limit,
                       max_new_tokens=o.eval_max_new_tokens, settings=list(o.eval_settings),
                       batch_size=o.eval_batch_size, index_dir=run.settings.index_dir, k=o.top_k, baseline=base,
                       resamples=o.resamples, command=run.command, progress=False, log=run.note,
                       on_progress=on_progress, rag_settings=run.settings)
    return {"brief": evaluation_brief(summary, base, tuned), "base": base, "tuned": tuned,
            "summary": str(run.eval_dir / "summary.md"), "seconds": summary["run"]["duration_s"]}


# ------------------------------------------------------------------------------------------ install


def install(run: CourseRun, state: CourseState) -> dict[str, Any]:
    """Install the course adapter for `model = auto` when the policy and the evaluation say so."""
    from rag.generation.course_registry import course_fingerprint, install_course, load_registry

    brief = state.result("evaluate")["brief"]
    quiz = state.result("quiz") if "quiz" in state.stages else {}
    yes, why = decide(brief, run.options.install, quiz if quiz.get("quiz") else None)
    result: dict[str, Any] = {"installed": yes, "reason": why, "policy": run.options.install,
                              "quiz_sha256": quiz.get("quiz_sha256"),
                              "course_id": course_fingerprint(run.course_files), "registry": str(run.registry)}
    if not yes:
        if any(c.id == result["course_id"] for c in load_registry(run.registry)):
            result["reason"] += (f"; the adapter installed earlier for this course stays (`raft course {run.corpus} "
                                 "--uninstall` removes it)")
    if yes:
        entry = install_course(run.registry, run.adapter, name=run.corpus.resolve().name, source=str(run.corpus.resolve()),
                               evaluation={**brief, "policy": run.options.install, "report": str(run.eval_dir),
                                           **({"quiz": quiz} if quiz.get("quiz") else {})})
        result["folder"] = str(entry.folder(run.registry))
    return result


def install_still_valid(run: CourseRun, result: dict[str, Any]) -> bool:
    """A finished install stands while its policy and quiz are the ones asked and, if it installed, the registry
    still lists it."""
    from rag.generation.course_registry import load_registry

    if result.get("policy") != run.options.install or result.get("quiz_sha256") != quiz_digest(run.options.quiz):
        return False
    if not result.get("installed"):
        return True
    return any(str(c.folder(run.registry)) == result.get("folder") for c in load_registry(run.registry))


@dataclass(frozen=True)
class Stage:
    """One stage: its name, the unit its progress counts, what it does, and whether a finished run of it stands."""

    name: str
    run: Callable[[CourseRun, CourseState], dict[str, Any]]
    still_valid: Callable[[CourseRun, dict[str, Any]], bool] = lambda run, result: True


STAGES: tuple[Stage, ...] = (
    Stage("plan", plan),
    Stage("generate", generate),
    Stage("train", train),
    Stage("evaluate", evaluate),
    Stage("quiz", ask_quiz, quiz_still_valid),
    Stage("install", install, install_still_valid),
)

__all__ = ["Stage", "STAGES", "plan", "generate", "train", "evaluate", "install", "chunks_done", "stage_adapter"]
