"""The `quiz` stage of `raft course`: a quiz people wrote for the course (`--quiz FILE`) asked of the base and of
the tuned model through the product, so that the install decision rests on people's questions.

Why: the held-out split is the teacher's own questions. On an independent course (docs/results/raft.md) an
adapter won there by +0.17 F1 [+0.11, +0.24] and lost on the course's own quiz by -0.062 [-0.110, -0.014]:
that evidence did not transfer. With a quiz, the product's choice on it decides (raft.course.verdict.decide).

The quiz is a JSONL file of multiple-choice items, as `rag eval-course` reads (`question`, `options`, `correct`
indices; `id` optional). Each item is searched in the course's index as the product searches a quiz item and
answered by `rag.evaluation.course_run.score_choices`; rows are appended per (model, item) to OUT/eval/quiz_rows.jsonl
so a killed stage resumes at the next item.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from raft.course.context import CourseRun
from raft.course.progress import CourseEvent
from raft.course.state import CourseState
from rag.errors import RagError

ROWS = "quiz_rows.jsonl"


def quiz_digest(path: str | None) -> str | None:
    """SHA-256 of the quiz file's bytes (None without a quiz): a changed quiz is asked again.

    :raises RagError: the file cannot be read.
    """
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise RagError(f"cannot read the quiz {path}: {e.strerror or e}; give a JSONL file of multiple-choice "
                       "items (question, options, correct)") from None


def load_quiz(path: str) -> list[dict[str, Any]]:
    """The quiz's items, each with options and correct indices.

    :raises RagError: one line naming the file and the item: unreadable, not JSONL, or an item without options.
    """
    from rag.evaluation.retrieval import load_questions

    items = load_questions(Path(path))
    seen: set[str] = set()
    for q in items:
        if not q.get("options"):
            raise RagError(f"{path}: item {q['id']!r} has no \"options\": --quiz takes multiple-choice items "
                           "(question, options, correct)")
        if str(q["id"]) in seen:
            raise RagError(f"{path}: the id {str(q['id'])!r} is used twice: give every item its own id")
        seen.add(str(q["id"]))
    return items


def _done_rows(path: Path, digest: str) -> dict[tuple[str, str], bool]:
    """{(model, item id): right} already written for the quiz of this `digest` (rows of another quiz are not
    counted). The file is first made a clean log to append to (rag.common.runfolder.repair_jsonl): a torn last
    line, from a kill mid-write, is cut and its item asked again."""
    from rag.common.runfolder import read_jsonl, repair_jsonl

    done: dict[tuple[str, str], bool] = {}
    if path.is_file():
        repair_jsonl(path)
        for row in read_jsonl(path):
            try:
                if row["quiz"] == digest:
                    done[(row["model"], row["id"])] = bool(row["right"])
            except (KeyError, TypeError):
                continue
    return done


def ask_quiz(run: CourseRun, state: CourseState) -> dict[str, Any]:
    """Score the quiz with the base and the tuned model (the product's choice), resumably; returns
    {"quiz", "quiz_sha256", "n", "base", "tuned", "delta"} (with_interval cells and the paired comparison),
    or {"quiz": None, "quiz_sha256": None} without a quiz."""
    from rag.api import get_generator, open_retriever
    from rag.common.runfolder import append_jsonl
    from rag.evaluation.bootstrap import paired_comparison
    from rag.evaluation.course_run import score_choices
    from rag.evaluation.courses import Course, with_interval

    o = run.options
    if o.quiz is None:
        return {"quiz": None, "quiz_sha256": None}
    digest = quiz_digest(o.quiz)
    items = load_quiz(o.quiz)
    folder = run.eval_dir
    folder.mkdir(parents=True, exist_ok=True)
    rows_path = folder / ROWS
    done = _done_rows(rows_path, digest)
    models = {"base": o.base, "tuned": str(run.adapter)}
    retriever = open_retriever(run.settings)
    total = len(items) * len(models)
    run.emit(CourseEvent("start", "quiz", done=len(done), total=total, unit="item"))
    for label, spec in models.items():
        todo = [q for q in items if (label, str(q["id"])) not in done]
        if not todo:
            continue
        settings = run.settings.model_copy(update={"model": spec})
        generator = get_generator(settings)
        def keep(row: dict[str, Any], label: str = label) -> None:  # on disk (fsynced) before the next item
            right = bool(row["mc"]["rag"]["right"])
            append_jsonl(rows_path, [{"quiz": digest, "model": label, "id": str(row["id"]), "right": right}])
            done[(label, str(row["id"]))] = right
            run.emit(CourseEvent("advance", "quiz", done=len(done), total=total, unit="item"))

        score_choices(Course("quiz", run.corpus, todo), retriever, settings, generator, progress=False, on_row=keep)
    base = [float(done[("base", str(q["id"]))]) for q in items]
    tuned = [float(done[("tuned", str(q["id"]))]) for q in items]
    return {"quiz": str(Path(o.quiz).resolve()), "quiz_sha256": digest, "n": len(items),
            "base": with_interval(base), "tuned": with_interval(tuned),
            "delta": paired_comparison(tuned, base, resamples=o.resamples)}


def quiz_still_valid(run: CourseRun, result: dict[str, Any]) -> bool:
    """A finished quiz stage stands while the quiz asked (or its absence) is the same file content."""
    return result.get("quiz_sha256") == quiz_digest(run.options.quiz)


__all__ = ["ask_quiz", "quiz_still_valid", "load_quiz", "quiz_digest"]
