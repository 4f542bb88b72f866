"""What `raft course` says to people: the plan up front (time and disk, and where the numbers come from) and
the outcome (base against tuned per setting with intervals, and whether the adapter was installed)."""

from __future__ import annotations

from typing import Any

from raft.course.estimate import human_bytes, human_seconds

_WORK_STAGES = ("generate", "train", "evaluate")


def format_plan(plan: dict[str, Any], left: dict[str, float], out: str, chunks_done: int | None = None,
                started: tuple[str, ...] = ()) -> str:
    """The plan as a few lines: the course, the teacher, the time each stage takes (or still needs), the disk.

    :param plan: the plan stage's result. :param left: seconds each work stage still needs (raft.course.run.time_left).
    :param out: the run's folder. :param chunks_done: chunks the teacher has done by now (default: the plan's count).
    :param started: the work stages an earlier session began: the run is a resumed one even when the probed
        rates are too small to show less time left (a fast teacher server).
    """
    w, r, d = plan["workload"], plan["rates"], plan["disk"]
    head = [f"course {plan['course_id']}: {len(plan['course_files'])} files, {plan['chunks']} chunks for the teacher "
            f"-> {out}", f"teacher: {plan['teacher']['description']}"]
    if not any(left.values()):
        return "\n".join([*head, "generate, train and evaluate: done before"])
    done = w["chunks_done"] if chunks_done is None else chunks_done
    resumed = bool(started) or any(left[s] < plan["seconds"][s] for s in _WORK_STAGES)
    parts = {"generate": f"generate ~{human_seconds(left['generate'])} ({w['chunks'] - done} of {w['chunks']} "
                         f"chunks, ~{w['samples']} samples in all)",
             "train": f"train ~{human_seconds(left['train'])} (~{w['train']} samples x {w['epochs']:g} epoch"
                      f"{'s' if w['epochs'] != 1 else ''})",
             "evaluate": f"evaluate ~{human_seconds(left['evaluate'])} (~{w['answers']} answers: base and tuned, "
                         f"{w['settings']} setting{'s' if w['settings'] != 1 else ''})"}
    parts = {k: (f"{k} done" if resumed and left[k] == 0 else v) for k, v in parts.items()}
    return "\n".join([
        *head,
        f"{'time left' if resumed else 'time'}: ~{human_seconds(sum(left.values()))} in all: "
        + "; ".join(parts.values()),
        f"  (from {r['source']}: {r['teacher_chunk_s']:.1f} s per chunk"
        + (f" with {r['teacher_parallel']} requests at once" if r["teacher_parallel"] > 1 else "")
        + f", {r['train_sample_s']:.2f} s per training sample, {r['answer_s']:.2f} s per answer; not counted: "
          "building the tuned model's decoder on its first use)",
        f"disk: ~{human_bytes(d['out_bytes'])} in {out} (merged model {human_bytes(d['merged'])}, checkpoints "
        f"{human_bytes(d['checkpoints'])}, dataset {human_bytes(d['dataset'])}) and ~{human_bytes(d['cache_bytes'])} "
        f"in the model cache on first use; free: "
        + ", ".join(f"{human_bytes(v)} in {k}" for k, v in plan["free"].items()),
    ])


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[-]"


def format_outcome(result: dict[str, Any]) -> str:
    """The evaluation table and the install decision of a finished run (raft.course.run.run_course's result)."""
    stages = result["stages"]
    lines = []
    evaluation = stages.get("evaluate", {}).get("result", {})
    quiz = stages.get("quiz", {}).get("result") or {}
    if brief := evaluation.get("brief"):
        lines.append(f"held-out evaluation ({brief['questions']} questions; F1 with 95% bootstrap intervals; "
                     f"report {evaluation['summary']}):")
        lines.append("| setting | base | tuned | tuned - base (paired) | wins/ties/losses |")
        lines.append("|---|---|---|---|---|")
        for setting, c in brief["settings"].items():
            decides = setting == brief["primary"] and not quiz.get("quiz")
            lines.append(f"| {setting}{' (decides)' if decides else ''} | {c['base_f1']:.3f} "
                         f"{_ci(c['base_f1_ci'])} | {c['tuned_f1']:.3f} {_ci(c['tuned_f1_ci'])} | {c['delta']:+.3f} "
                         f"{_ci(c['delta_ci'])} | {c['wins']}/{c['ties']}/{c['losses']} |")
    if quiz.get("quiz"):
        d = quiz["delta"]
        lines.append(f"quiz {quiz['quiz']} ({quiz['n']} items, the product's choice; decides): base "
                     f"{quiz['base']['mean']:.3f} {_ci(quiz['base']['ci'])}, tuned {quiz['tuned']['mean']:.3f} "
                     f"{_ci(quiz['tuned']['ci'])}, tuned - base {d['mean_delta']:+.3f} {_ci(d['ci'])}, "
                     f"wins/ties/losses {d['wins']}/{d['ties']}/{d['losses']}")
    install = stages.get("install", {}).get("result")
    if install:
        lines.append(install["reason"])
        if install["installed"]:
            lines.append(f"-> {install['folder']}: `model = auto` (rag ask, rag serve, the app) now answers with it on "
                         "this course, recognised by its files' content")
    elif not result.get("complete"):
        lines.append("stopped after the plan: run the same command without --plan to start (it resumes)"
                     if "generate" not in stages else "not finished: run the same command again to resume")
    return "\n".join(lines)


__all__ = ["format_plan", "format_outcome"]
