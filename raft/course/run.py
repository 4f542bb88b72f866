"""`raft course`: one call from a course folder to its RAFT adapter, installed where `model = auto` picks it.

`run_course` chooses the teacher (refusing before any work when there is none), takes OUT's lock, checks OUT's
course.json against the arguments (other arguments are refused, naming each difference), indexes the course
(incrementally: seconds when nothing changed), refuses a course that changed since the plan, then runs the
stages of raft.course.stages in order. Each stage's record is written atomically when it starts and when it
ends (raft.course.state); a finished stage is skipped on the next call, an unfinished one runs again and
resumes its own folder. Killed anywhere, the same command finishes the run without redoing finished stages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from raft.course.context import ADAPTER, DATA, EVAL, IDENTITY, TRAIN, CourseRun
from raft.course.estimate import Rates, Workload, stage_seconds
from raft.course.options import CourseOptions
from raft.course.progress import CourseEvent
from raft.course.quiz import load_quiz
from raft.course.stages import STAGES, Stage, chunks_done
from raft.course.state import STATE, CourseState, StageRecord, load_state, now_iso, save_state
from raft.course.teacher import choose_teacher
from rag.common.runfolder import FolderLock, check_identity
from rag.errors import RagError


def _index_course(run: CourseRun) -> dict[str, str]:
    """Index (or update the index of) the course; return its files, name -> SHA-256, as the index lists them."""
    from rag.api import index_corpus, index_report_lines

    report = index_corpus(run.corpus, run.settings)
    for line in index_report_lines(report):  # what the index left out is said, as `rag index` says it
        run.note(line)
    files = {name: f["sha256"] for name, f in run.index().manifest["files"].items()}
    if not files:
        raise RagError(f"no file of {run.corpus} could be indexed: give a folder of .md/.txt/.pdf/.html/... files")
    return files


def _check_same_course(run: CourseRun, state: CourseState) -> None:
    before = state.result("plan").get("course_files")
    if before is None or before == run.course_files:
        return
    changed = sorted(set(before.items()) ^ set(run.course_files.items()))
    names = sorted({name for name, _ in changed})
    raise RagError(f"the course in {run.corpus} changed since this run was planned ({len(names)} file(s) differ, "
                   f"e.g. {names[0]}): use another --out for the changed course, or delete {run.out} to start over")


def time_left(run: CourseRun, state: CourseState) -> tuple[dict[str, float], int]:
    """(seconds each work stage still needs, chunks done): from the plan's probed rates and the work on disk."""
    plan = state.result("plan")
    done = chunks_done(run, {c.id for c in run.chunks()})
    work = Workload(**{**{f.name: plan["workload"][f.name] for f in fields(Workload)}, "chunks_done": done})
    seconds = stage_seconds(work, Rates(**plan["rates"]))
    return {name: 0.0 if state.done(name) else round(s, 1) for name, s in seconds.items()}, done


def _run_stage(stage: Stage, run: CourseRun, state: CourseState) -> None:
    before = state.stages.get(stage.name)
    sessions = before.sessions + 1 if before else 1
    started_at = before.started_at if before else now_iso()
    spent = before.seconds if before else 0.0
    state.stages[stage.name] = StageRecord(status="running", started_at=started_at, sessions=sessions, seconds=spent)
    save_state(run.out, state)
    clock = time.perf_counter()
    try:
        result = stage.run(run, state)
    except BaseException:
        state.stages[stage.name] = StageRecord(status="running", started_at=started_at, sessions=sessions,
                                               seconds=round(spent + time.perf_counter() - clock, 1))
        save_state(run.out, state)
        raise
    state.stages[stage.name] = StageRecord(status="done", started_at=started_at, finished_at=now_iso(),
                                           sessions=sessions, seconds=round(spent + time.perf_counter() - clock, 1),
                                           result=result)
    save_state(run.out, state)
    run.emit(CourseEvent("done", stage.name, data=result))


def run_course(corpus: Path, out: Path, options: CourseOptions, settings: Any, *,
               on_event: Callable[[CourseEvent], None] | None = None, command: str | None = None,
               plan_only: bool = False) -> dict[str, Any]:
    """Generate, train, evaluate and install a RAFT adapter for the course in `corpus`, resumably, in `out`.

    :param corpus: the course folder. :param out: the run's folder (same arguments = resume).
    :param options: the run's options. :param settings: rag Settings: the course's index_dir, the embedder and
        chunking, the server limits, the registry folder (course_adapters_dir); its model is replaced by the teacher.
    :param on_event: receives every CourseEvent (raft.course.progress.ProgressView draws them).
    :param command: the command line, recorded by the training and evaluation reports.
    :param plan_only: stop after the plan (the estimate), before any long work.
    :returns: {"out", "stages": {name: record}, "plan", "left", ...}: the state after this call.
    :raises RagError: no teacher, a bad --quiz, a missing course folder, OUT made with other arguments or busy, a changed
        course, too little disk, or what a stage raises (one line each).
    """
    from rag.generation.course_registry import registry_dir

    corpus, out = Path(corpus), Path(out)
    if not corpus.is_dir():
        raise RagError(f"course folder {corpus} does not exist or is not a folder: give the folder of the course's files")
    if out.resolve().is_relative_to(corpus.resolve()):
        raise RagError(f"--out {out} is inside the course folder {corpus}: its files would be indexed as the course's; "
                       "use a folder outside it")
    teacher = choose_teacher(options.teacher, options.teacher_name)  # refused here, before any work
    if options.quiz is not None:
        load_quiz(options.quiz)  # a bad quiz is refused before any work too
    update: dict[str, Any] = {"model": teacher.spec, "model_name": options.teacher_name}
    if options.teacher_max_tokens is not None:
        update["max_new_tokens"] = options.teacher_max_tokens
    settings = settings.model_copy(update=update)
    emit = on_event or (lambda event: None)
    with FolderLock(out, f"another `raft course` is running on {out}: wait for it to finish, or use another --out",
                    what="output folder", hint="fix its permissions or use another --out"):
        identity = {"corpus": str(corpus.resolve()), "index_dir": str(Path(settings.index_dir).resolve()),
                    **options.identity()}
        check_identity(out, IDENTITY, identity, what="a course run", option="--out",
                       leftovers=(DATA, TRAIN, ADAPTER, EVAL, STATE))
        state, damaged = load_state(out)
        run = CourseRun(corpus, out, options, settings, teacher, registry_dir(settings.course_adapters_dir, settings.cache_dir), emit,
                        command)
        if damaged:
            run.note(damaged)
        run.course_files = _index_course(run)
        _check_same_course(run, state)
        for stage in STAGES:
            record = state.stages.get(stage.name)
            if record is not None and record.status == "done" and stage.still_valid(run, record.result):
                emit(CourseEvent("skip", stage.name, data=record.result))
            else:
                _run_stage(stage, run, state)
            if stage.name == "plan":
                left, done = time_left(run, state)
                started = [s.name for s in STAGES if s.name != "plan" and s.name in state.stages]
                emit(CourseEvent("plan", "plan", data={**state.result("plan"), "left": left, "chunks_done_now": done,
                                                       "started": started}))
                if plan_only:
                    break
        return {"out": str(out), "corpus": str(corpus), "stages": {k: v.model_dump(mode="json")
                                                                    for k, v in state.stages.items()},
                "plan": state.result("plan"), "left": time_left(run, state)[0] if state.done("plan") else None,
                "complete": all(state.done(s.name) for s in STAGES)}


def uninstall_course(corpus: Path, settings: Any) -> list[Any]:
    """Remove every installed course adapter that was tuned on the folder `corpus` (its entries' `source`).

    :param settings: rag Settings (its course_adapters_dir names the registry).
    :returns: the removed entries (rag.generation.course_registry.InstalledCourse), [] when none was installed.
    :raises RagError: a damaged registry.
    """
    from rag.generation.course_registry import load_registry, registry_dir, remove_course

    root = registry_dir(settings.course_adapters_dir, settings.cache_dir)
    source = str(Path(corpus).resolve())
    return [gone for c in load_registry(root) if c.source == source
            if (gone := remove_course(root, c.id)) is not None]


__all__ = ["run_course", "time_left", "uninstall_course"]
