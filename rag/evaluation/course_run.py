"""`rag eval-course`: index one course as a user would, ask its quiz, and compare against the plainest
pipeline a user could write, in the same run.

Retrieval is scored for the product (the given settings and mode) and for LangChain's
RecursiveCharacterTextSplitter(1000, 200) + flat FAISS over the same embedder (`compare.LangChainBaseline`),
at both hit grains of `rag.evaluation.courses`, each figure with its 95% bootstrap interval and the product
minus the baseline as a paired interval. Multiple choice, when a model that gives log-probabilities is
available, is scored three ways on the same questions (`end_to_end.score_mc`): closed book, the model with
the product's passages, and the product's own grounded choice; single- and multi-answer items alike (right
= every correct option above every wrong one).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rag.common.progress import progress_bar
from rag.evaluation.courses import (
    GRAINS,
    METRICS,
    Course,
    grain_ranks,
    paired,
    rank_summary,
    score_retrieval,
    with_interval,
)
from rag.evaluation.retrieval import product_search

BASELINE = "LangChain 1000/200 dense"
CHOICE_WAYS = ("closed_book", "rag_plain", "rag")


def retrieval_block(rows: dict[str, list[dict[str, Any]]], baseline: str | None) -> dict[str, Any]:
    """Summaries per pipeline and grain, and each pipeline minus `baseline` (paired) per grain.

    :param rows: {pipeline: rows of `courses.score_retrieval`} on the same questions.
    :param baseline: the pipeline the others are compared with (None: no comparison).
    :returns: {"summary": {pipeline: {grain: rank_summary}}, "vs_baseline": {pipeline: {grain: paired}}}.
    """
    ranks = {name: {g: grain_ranks(r, g)[1] for g in GRAINS if grain_ranks(r, g)[0]} for name, r in rows.items()}
    out: dict[str, Any] = {"summary": {name: {g: rank_summary(v) for g, v in by.items()} for name, by in ranks.items()},
                           "vs_baseline": {}}
    if baseline in ranks:
        out["vs_baseline"] = {name: {g: paired(v, ranks[baseline][g]) for g, v in by.items()}
                              for name, by in ranks.items() if name != baseline}
    return out


def choice_block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of each way of answering (closed book, the model with passages, the product's choice) with
    intervals, and the product's choice and the model with passages each minus closed book (paired)."""
    from rag.evaluation.bootstrap import paired_comparison

    right = {w: [float(r["mc"][w]["right"]) for r in rows] for w in CHOICE_WAYS}
    return {"n": len(rows), "multi_answer": sum(1 for r in rows if len(r["mc"]["correct"]) > 1),
            "accuracy": {w: with_interval(v) for w, v in right.items()},
            "vs_closed_book": {w: paired_comparison(right[w], right["closed_book"]) for w in ("rag_plain", "rag")}}


def score_choices(course: Course, retriever: Any, settings: Any, generator: Any, *, progress: bool = True,
                  search: Callable[[dict[str, Any]], list] | None = None,
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Score every question of `course` as multiple choice with the product's passages.

    :param course: the course (every question has options).
    :param retriever: the product's Retriever over the course's index.
    :param settings: the run's settings (mode, top_k, max_context_tokens, choice_retriever_weight).
    :param generator: an in-process model that gives token log-probabilities.
    :param search: question row -> passages (default: as the product searches a quiz item, `product_search`).
    :param on_row: called with each row as soon as it is scored (e.g. to write it before the next is asked).
    :returns: one row per question: {"id", "course", "mc": end_to_end.score_mc's result, "seconds"}.
    """
    from rag.api import make_pipeline
    from rag.evaluation.end_to_end import score_mc

    budget = min(generator.context_window, settings.max_context_tokens)
    boilerplate = make_pipeline(settings, retriever=retriever, generator=generator).boilerplate()
    rows = []
    for q in progress_bar(course.questions, total=len(course.questions), desc=f"{course.name} choices",
                          unit="question", enabled=progress):
        t0 = time.perf_counter()
        hits = search(q) if search else product_search(retriever, q, settings.top_k, settings.mode)
        mc = score_mc(generator, q, hits, settings.top_k, budget, retriever.embedder, boilerplate,
                      weight=settings.choice_retriever_weight)
        rows.append({"id": q["id"], "course": course.name, "mc": mc, "seconds": round(time.perf_counter() - t0, 3)})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def evaluate_course(course: Course, settings: Any, embedder: Any, *,
                    load_generator: Callable[[Any], Any] | None = None, baseline: bool = True,
                    progress: bool = True) -> tuple[dict[str, Any], dict[str, list]]:
    """Index the course with `settings` (in a scratch folder), score retrieval against the baseline, and
    multiple choice when a model is given.

    :param course: the course.
    :param settings: the product's settings (index_dir is ignored: the index goes to a scratch folder).
    :param embedder: the embedder of `settings`.
    :param load_generator: settings -> model (e.g. `rag.api.get_generator`, which picks the model `auto`
        means for the new index), or None to skip multiple choice; a model without token
        log-probabilities skips it with a note.
    :param baseline: also build the LangChain baseline and compare.
    :param progress: show progress bars on stderr.
    :returns: (report {"course", "n", "notes", "retrieval", "choices"?, "seconds"}, per-question rows
        {"retrieval": {pipeline: rows}, "choices": rows}).
    :raises RagError: a course that cannot be indexed.
    """
    from rag.evaluation.compare import LangChainBaseline, build_product

    started = time.perf_counter()
    rows: dict[str, Any] = {"retrieval": {}}
    product = f"product {settings.mode}"
    with tempfile.TemporaryDirectory(prefix="rag-eval-course-") as work:
        overrides = settings.model_dump(exclude={"index_dir", "corpus_dir"})
        retriever, build_s, _ = build_product(course.lessons, embedder, overrides, Path(work))
        if baseline:
            dense = LangChainBaseline(course.lessons, embedder).searcher("dense")
            rows["retrieval"][BASELINE] = score_retrieval(lambda q: dense.search(q["question"], 10), course)
        rows["retrieval"][product] = score_retrieval(lambda q: product_search(retriever, q, 10, settings.mode),
                                                     course)
        report: dict[str, Any] = {"course": course.name, "n": len(course.questions), "notes": course.notes,
                                  "product": product, "build_s": round(build_s, 1),
                                  "retrieval": retrieval_block(rows["retrieval"], BASELINE if baseline else None)}
        if load_generator is not None:
            from rag.evaluation.loglik import supports_loglik

            run = settings.model_copy(update={"index_dir": retriever.index_dir, "corpus_dir": course.lessons})
            generator = load_generator(run)
            report["model"] = generator.model_id
            if supports_loglik(generator):
                rows["choices"] = score_choices(course, retriever, run, generator, progress=progress)
                report["choices"] = choice_block(rows["choices"])
            else:
                report["notes"] = {**course.notes, "choices": f"not scored: {generator.model_id} gives no token "
                                   "log-probabilities (use the bundled model or a local model folder)"}
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report, rows


def fmt_interval(cell: dict[str, Any]) -> str:
    """"mean [low, high]" of a `with_interval` cell, 3 decimals ("n/a" without a mean)."""
    mean, ci = cell.get("mean"), cell.get("ci")
    if mean is None:
        return "n/a"
    return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{mean:.3f}"


def fmt_delta(cell: dict[str, Any]) -> str:
    """"+delta [+low, +high]" of a `paired_comparison` result, 3 decimals ("n/a" without questions)."""
    d, ci = cell.get("mean_delta"), cell.get("ci")
    if d is None:
        return "n/a"
    return f"{d:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{d:+.3f}"


def retrieval_table(block: dict[str, Any], grain: str) -> list[str]:
    """Markdown rows: each pipeline's metrics at `grain` with intervals, then its paired delta to the baseline."""
    lines = ["| pipeline | n | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for name, grains in block["summary"].items():
        if grain in grains:
            s = grains[grain]
            lines.append(f"| {name} | {s['n']} | " + " | ".join(fmt_interval(s[m]) for m in METRICS) + " |")
    for name, grains in block["vs_baseline"].items():
        if grain in grains:
            lines.append(f"| {name} − baseline | {grains[grain][METRICS[0]]['n']} | "
                         + " | ".join(fmt_delta(grains[grain][m]) for m in METRICS) + " |")
    return lines


def format_course_report(report: dict[str, Any]) -> str:
    """The report of `evaluate_course` as markdown (what `rag eval-course` prints and writes)."""
    notes = report["notes"]
    lines = [f"# rag eval-course: {report['course']}", "",
             f"{report['n']} questions ({notes.get('with_lesson', 0)} with a lesson file, "
             f"{notes.get('with_evidence', 0)} with evidence from {notes.get('evidence_from')}); "
             f"index built in {report['build_s']} s; {report['seconds']:.0f} s in all. "
             "Figures: mean [95% bootstrap interval]; deltas are paired.", ""]
    for grain, what in (("lesson", "a passage from the question's lesson file"),
                        ("evidence", "a passage holding the question's evidence")):
        if any(grain in g for g in report["retrieval"]["summary"].values()):
            lines += [f"## Retrieval, hit = {what}", "", *retrieval_table(report["retrieval"], grain), ""]
    ch = report.get("choices")
    if ch:
        names = {"closed_book": "closed book", "rag_plain": "model with passages", "rag": "product's choice"}
        lines += [f"## Multiple choice (n {ch['n']}, {ch['multi_answer']} with several correct options)", "",
                  "| way | accuracy |", "|---|---|",
                  *[f"| {names[w]} | {fmt_interval(ch['accuracy'][w])} |" for w in CHOICE_WAYS],
                  *[f"| {names[w]} − closed book | {fmt_delta(ch['vs_closed_book'][w])} |" for w in ("rag_plain", "rag")],
                  ""]
    return "\n".join(lines)


__all__ = ["BASELINE", "CHOICE_WAYS", "choice_block", "evaluate_course", "fmt_delta", "fmt_interval", "format_course_report",
           "retrieval_block", "retrieval_table", "score_choices"]
