"""Evaluation on whole courses: a course folder with its own quiz, indexed as a user would index it.

A course folder holds `course/` (the lesson files, any format `rag index` reads) and `quiz.jsonl`, one
multiple-choice question a line: `{"id", "question", "options", "correct": [indices], "lesson_file"?,
"evidence"?: [quote, ...]}`. `lesson_file` names the `course/` file the question belongs to; `evidence`
quotes (as in `rag eval` question files) name the text that answers it. Evidence can also come from an
annotation file kept apart from the course (`load_evidence`): per question, the spans of the lesson files
that answer it, as file name and character offsets, with each file's SHA-256 so that offsets made for
another version of a file are refused, never read at the wrong place. The span texts are read from the
course at evaluation time, so an annotation file holds no course text.

Two grains of retrieval hit, each scored separately (recall@1/5/10 and MRR@10):

* lesson: a passage from the question's lesson file. Coarse: a 20-lesson course gives a random passage a
  5% chance, and any passage of a long lesson counts.
* evidence: a passage holding one of the question's evidence texts (`contains_evidence`, whitespace-
  normalised, case-folded, fuzzy). Questions without evidence (general knowledge the course does not
  state) are left out of this grain and counted.

Every figure carries a 95% percentile bootstrap interval over the questions (`rag.evaluation.bootstrap`),
and two systems are compared by the paired bootstrap of their per-question differences. Pooling several
courses concatenates their questions (each question weighs the same). The decision rule of docs/guide/evaluate.md
is `rule_verdict`: a candidate wins when the pooled paired interval lies above zero and
no single course's paired interval lies below zero.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.common.text import read_text
from rag.errors import RagError
from rag.evaluation.bootstrap import bootstrap_ci, paired_comparison
from rag.evaluation.retrieval import contains_evidence, load_questions
from rag.retrieval.retriever import Hit

LESSONS_DIR = "course"
QUIZ_FILE = "quiz.jsonl"
KS = (1, 5, 10)
MRR_DEPTH = 10
GRAINS = ("lesson", "evidence")
MAX_SPAN_CHARS = 2000  # an evidence span longer than this is a section, not evidence


@dataclass
class Course:
    """A course ready to evaluate.

    :param name: label for tables (the folder name unless given).
    :param lessons: the folder of lesson files that is indexed.
    :param questions: quiz rows; "lesson_file" (str) and "evidence" (list of texts) where known.
    :param notes: where the evidence came from, how many questions have it.
    """

    name: str
    lessons: Path
    questions: list[dict[str, Any]]
    notes: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes (what an annotation file records per lesson file)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_course(folder: Path, *, quiz: Path | None = None, evidence: Path | None = None,
                name: str | None = None) -> Course:
    """Read a course folder: its lesson folder and its quiz, and the evidence annotations if given.

    :param folder: the course folder (`course/` and `quiz.jsonl` inside).
    :param quiz: another quiz file (default folder/quiz.jsonl).
    :param evidence: an annotation file (see `load_evidence`); quotes already in the quiz are kept.
    :param name: the course's label (default: the folder's name).
    :returns: the Course; every question has options and correct indices.
    :raises RagError: no lesson folder, a missing or bad quiz line, a question without options, a
        `lesson_file` that is not in the lesson folder, or a bad annotation file.
    """
    folder = Path(folder)
    lessons = folder / LESSONS_DIR
    if not lessons.is_dir():
        raise RagError(f"course folder {folder} has no {LESSONS_DIR}/ folder of lesson files: "
                       f"put the lessons in {lessons} and the quiz in {folder / QUIZ_FILE}")
    quiz_path = Path(quiz) if quiz is not None else folder / QUIZ_FILE
    questions = load_questions(quiz_path)
    for n, q in enumerate(questions, start=1):
        if "options" not in q:
            raise RagError(f"{quiz_path}: question {q['id']!r} has no \"options\": a course quiz is multiple choice")
        lesson = q.get("lesson_file")
        if lesson is not None and not (isinstance(lesson, str) and (lessons / lesson).is_file()):
            raise RagError(f"{quiz_path}: question {q['id']!r} names lesson_file {lesson!r}, which is not a "
                           f"file in {lessons}: fix the name or drop the field")
    ids = [str(q["id"]) for q in questions]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise RagError(f"{quiz_path}: id {dup!r} is used twice: give every question its own id")
    notes: dict[str, Any] = {"quiz": str(quiz_path), "evidence_from": "quiz quotes"}
    if evidence is not None:
        spans = load_evidence(Path(evidence), lessons, ids)
        for q in questions:
            q["evidence"] = list(q.get("evidence", [])) + spans.get(str(q["id"]), [])
        notes["evidence_from"] = str(evidence)
    notes["with_evidence"] = sum(1 for q in questions if q.get("evidence"))
    notes["with_lesson"] = sum(1 for q in questions if q.get("lesson_file"))
    return Course(name or folder.name, lessons, questions, notes)


def load_evidence(path: Path, lessons: Path, ids: Sequence[str]) -> dict[str, list[str]]:
    """Read an evidence annotation file and the span texts it points at.

    Lines: `{"id", "spans": [{"file", "start", "end"}], "sha256": {file: hex}}`; a question whose course
    does not state the answer has `"spans": []` (and a "why").

    :param path: the annotation file (JSON Lines).
    :param lessons: the lesson folder the spans point into (offsets are `str` indices, end exclusive, into
        the file's text as `Path.read_text(encoding="utf-8")` reads it: universal newlines).
    :param ids: the quiz's question ids; an annotation for another id is refused.
    :returns: {question id: [span text, ...]} for the annotated questions that have spans.
    :raises RagError: bad JSON or fields, an unknown id, a file not in the lesson folder, a SHA-256 that
        does not match the file (the course changed since the annotation), or offsets out of range.
    """
    return {qid: [s.text for s in spans] for qid, spans in load_evidence_spans(path, lessons, ids).items()}


@dataclass(frozen=True)
class EvidenceSpan:
    """One annotated evidence span: its lesson file (relative to the lesson folder), character offsets
    [start, end) into that file's text (universal newlines), and the text there."""

    file: str
    start: int
    end: int
    text: str


def load_evidence_spans(path: Path, lessons: Path, ids: Sequence[str]) -> dict[str, list[EvidenceSpan]]:
    """Read an evidence annotation file with its offsets (what `load_evidence` reads, spans kept whole).

    :param path: the annotation file (JSON Lines, see `load_evidence`).
    :param lessons: the lesson folder the spans point into.
    :param ids: the quiz's question ids; an annotation for another id is refused.
    :returns: {question id: [EvidenceSpan, ...]} for the annotated questions that have spans.
    :raises RagError: as `load_evidence`.
    """
    known, out, texts, digests = set(ids), {}, {}, {}
    for n, line in enumerate(read_text(path, "evidence file").split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RagError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("spans"), list):
            raise RagError(f"{where}: needs an \"id\" of the quiz and a \"spans\" list")
        if str(row["id"]) not in known:
            raise RagError(f"{where}: id {row['id']!r} is not a question of the quiz: give the evidence file made "
                           "for this course's quiz")
        found = []
        for span in row["spans"]:
            text = _span_text(span, row.get("sha256") or {}, lessons, texts, digests, where)
            found.append(EvidenceSpan(span["file"], span["start"], span["end"], text))
        if found:
            out[str(row["id"])] = found
    return out


def _span_text(span: Any, sha: dict[str, str], lessons: Path, texts: dict[str, str], digests: dict[str, str],
               where: str) -> str:
    """The text of one annotated span, after checking its file, digest and offsets."""
    if not (isinstance(span, dict) and isinstance(span.get("file"), str) and isinstance(span.get("start"), int)
            and isinstance(span.get("end"), int)):
        raise RagError(f"{where}: each span needs \"file\", \"start\" and \"end\" (character offsets)")
    name = span["file"]
    target = lessons / name
    if name not in texts:
        if not target.is_file() or ".." in Path(name).parts:
            raise RagError(f"{where}: span file {name!r} is not a file of {lessons}")
        digests[name] = file_sha256(target)
        # str offsets of the text as Python's Path.read_text gives it: universal newlines
        texts[name] = read_text(target, "lesson file").replace("\r\n", "\n").replace("\r", "\n")
    if sha.get(name) != digests[name]:
        raise RagError(f"{where}: {target} is not the version the evidence was annotated on (SHA-256 differs): "
                       "annotate it again for this version of the course")
    start, end, text = span["start"], span["end"], texts[name]
    if not 0 <= start < end <= len(text) or end - start > MAX_SPAN_CHARS:
        raise RagError(f"{where}: span {start}-{end} does not fit {name} ({len(text)} characters) "
                       f"or is over {MAX_SPAN_CHARS} characters")
    return text[start:end]


# ------------------------------------------------------------------------------------------ scoring


def lesson_rank(hits: Sequence[Hit], lesson_file: str) -> int | None:
    """Rank (1-based) of the first passage from `lesson_file` (a path relative to the indexed folder)."""
    want = Path(lesson_file).as_posix()
    return next((i for i, h in enumerate(hits, start=1) if Path(h.chunk.source).as_posix() == want), None)


def evidence_rank(hits: Sequence[Hit], evidence: Sequence[str]) -> int | None:
    """Rank (1-based) of the first passage holding one of the evidence texts."""
    return next((i for i, h in enumerate(hits, start=1) if contains_evidence(h.chunk.text, evidence)), None)


def question_ranks(hits: Sequence[Hit], question: dict[str, Any]) -> dict[str, int | None]:
    """{grain: rank or None} for the grains the question can be scored at (see module docstring)."""
    out: dict[str, int | None] = {}
    if question.get("lesson_file"):
        out["lesson"] = lesson_rank(hits, question["lesson_file"])
    if question.get("evidence"):
        out["evidence"] = evidence_rank(hits, question["evidence"])
    return out


def per_question(ranks: Sequence[int | None], metric: str) -> list[float]:
    """One value per question of `metric` ("recall@K" → 0/1 hit within the first K, "mrr@10" → 1/rank)."""
    if metric == f"mrr@{MRR_DEPTH}":
        return [1.0 / r if r is not None and r <= MRR_DEPTH else 0.0 for r in ranks]
    if metric.startswith("recall@"):
        k = int(metric.split("@", 1)[1])
        return [1.0 if r is not None and r <= k else 0.0 for r in ranks]
    raise ValueError(f"unknown metric {metric!r}")


METRICS = tuple(f"recall@{k}" for k in KS) + (f"mrr@{MRR_DEPTH}",)


def with_interval(values: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """{"mean", "ci": [low, high] or None} of per-question values (95% percentile bootstrap)."""
    values = list(values)
    ci = bootstrap_ci(values, seed=seed) if values else None
    return {"mean": sum(values) / len(values) if values else None, "ci": list(ci) if ci else None}


def rank_summary(ranks: Sequence[int | None]) -> dict[str, Any]:
    """{"n", metric: {"mean", "ci"}} for every metric of METRICS."""
    return {"n": len(ranks), **{m: with_interval(per_question(ranks, m)) for m in METRICS}}


def paired(ranks: Sequence[int | None], baseline: Sequence[int | None], metrics: Sequence[str] = METRICS
           ) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of candidate minus baseline on the same questions, per metric
    (`rag.evaluation.bootstrap.paired_comparison`: n, mean_delta, ci, wins, ties, losses)."""
    return {m: paired_comparison(per_question(ranks, m), per_question(baseline, m)) for m in metrics}


def rule_verdict(per_course: dict[str, dict[str, Any]], pooled: dict[str, Any]) -> dict[str, Any]:
    """The decision rule on one metric: wins when the pooled paired interval excludes zero on the positive
    side and no course's paired interval lies wholly below zero.

    :param per_course: {course: paired_comparison result} of candidate minus the current default.
    :param pooled: the paired_comparison result over all courses' questions together.
    :returns: {"wins": bool, "pooled_above_zero": bool, "courses_below_zero": [course, ...]}.
    """
    above = pooled.get("ci") is not None and pooled["ci"][0] > 0
    below = [c for c, r in per_course.items() if r.get("ci") is not None and r["ci"][1] < 0]
    return {"wins": bool(above and not below), "pooled_above_zero": bool(above), "courses_below_zero": below}


def no_loss_verdict(per_course: dict[str, dict[str, Any]], pooled: dict[str, Any]) -> dict[str, Any]:
    """The gate of a change that must not cost quality (a faster path): it passes when neither the pooled
    paired interval nor any course's lies wholly below zero.

    :param per_course: {course: paired_comparison result} of the candidate minus the current path.
    :param pooled: the paired_comparison result over all courses' questions together.
    :returns: {"passes": bool, "pooled_below_zero": bool, "courses_below_zero": [course, ...]}.
    """
    pooled_below = pooled.get("ci") is not None and pooled["ci"][1] < 0
    below = [c for c, r in per_course.items() if r.get("ci") is not None and r["ci"][1] < 0]
    return {"passes": not pooled_below and not below, "pooled_below_zero": bool(pooled_below),
            "courses_below_zero": below}


def score_retrieval(search: Callable[[dict[str, Any]], list[Hit]], course: Course) -> list[dict[str, Any]]:
    """Search every question of `course` and record its ranks at each grain.

    :param search: question row -> hits, best first (MRR_DEPTH of them or more).
    :param course: the course.
    :returns: one row per question: {"id", "course", "ranks": {grain: rank or None}, "top": [source, ...]}.
    """
    rows = []
    for q in course.questions:
        hits = search(q)[:MRR_DEPTH]
        rows.append({"id": q["id"], "course": course.name, "ranks": question_ranks(hits, q),
                     "top": [h.chunk.source for h in hits[:3]]})
    return rows


def grain_ranks(rows: Sequence[dict[str, Any]], grain: str) -> tuple[list[str], list[int | None]]:
    """(question ids, ranks) of the rows scored at `grain` (rows without that grain are left out)."""
    kept = [r for r in rows if grain in r["ranks"]]
    return [f"{r['course']}/{r['id']}" for r in kept], [r["ranks"][grain] for r in kept]


__all__ = ["Course", "EvidenceSpan", "GRAINS", "KS", "LESSONS_DIR", "METRICS", "MRR_DEPTH", "QUIZ_FILE", "evidence_rank",
           "file_sha256", "grain_ranks", "lesson_rank", "load_course", "load_evidence", "load_evidence_spans", "paired", "per_question",
           "question_ranks", "rank_summary", "rule_verdict", "score_retrieval", "with_interval"]
