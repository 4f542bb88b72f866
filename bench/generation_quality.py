"""Answer quality of each way to run the local model against the float32 path, on the independent courses' own
quizzes, per course and pooled, with paired 95% bootstrap intervals.

A faster way to run the model (prompts read in bf16, ...) is acceptable when its answers are no worse than the
float32 path's beyond the paired interval: neither the pooled interval of (path - fp32) nor any course's lies
wholly below zero (rag.evaluation.courses.no_loss_verdict). Identical text is not asked for.

Every path answers the same quiz items of each course under ../shared/eval-courses through the product
(eval.raft_quiz_benchmark.model_rows, the product's retrieval and prompts):

* product's choice: the product's pick among the item's options (rag.answering.choices);
* model with passages / closed book: the options' log-likelihoods with and without the passages;
* answer: the product's answer to the stem alone; right when the key is the option closest to it (cosine of
  the embedder); and the answer's token F1 with the key's text.

Rows are kept per (course, path, question) outside the repository (they hold course text), so an
interrupted run resumes; `--limit N` takes a seeded sample of N items per course (the same for every path).

    python -m bench.generation_quality [--paths fp32,bf16-prefill] [--limit 40] [--parts choices,answers]

bench/generation.py runs it as its part 5 (`--only quality`). Writes bench/results/generation_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.benchutil import ROOT

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: name -> the Settings fields of that way to run the model; the first is the reference every other is held to.
PATHS: dict[str, dict[str, Any]] = {
    "fp32": {"decoder": "fp32", "prefill_dtype": "float32"},
    "bf16-prefill": {"decoder": "fp32", "prefill_dtype": "bfloat16"},
    "packed-a8": {"decoder": "packed-a8", "prefill_dtype": "float32"},
    "bf16-prefill+a8": {"decoder": "packed-a8", "prefill_dtype": "bfloat16"},
}
#: Settings that only change how an answer's tokens are written: multiple-choice scoring never decodes, so
#: the choices of two paths that differ only in these are the same rows (measured once).
DECODE_ONLY = ("decoder", "draft")


def path_env(settings: dict[str, Any]) -> dict[str, str]:
    """A path's Settings fields as the RAG_* environment variables a `rag` process reads."""
    return {f"RAG_{k.upper()}": str(v) for k, v in settings.items()}
WAYS = ("product", "rag_plain", "closed_book", "answer", "f1_key")
LABELS = {"product": "product's choice", "rag_plain": "model with passages", "closed_book": "closed book",
          "answer": "answer → key closest", "f1_key": "answer F1 with the key"}
POOLED = "pooled"


def sample(questions: list[dict[str, Any]], limit: int, seed: int = 0) -> list[dict[str, Any]]:
    """`limit` items drawn with a fixed seed, in the quiz's order (all of them when limit is 0 or larger)."""
    if not limit or limit >= len(questions):
        return list(questions)
    keep = sorted(random.Random(seed).sample(range(len(questions)), limit))
    return [questions[i] for i in keep]


def score(row: dict[str, Any], way: str) -> float | None:
    """One question's score on `way` (None when the way was not measured)."""
    if way == "f1_key":
        return float(row["answer"]["f1_key"]) if "answer" in row else None
    if way == "answer":
        return float(row["answer"]["right"]) if "answer" in row else None
    return float(row["right"][way])


def path_rows(paths: dict[str, dict[str, Any]], parts: list[str], limit: int, shared: Path, evidence: Path,
              cache: Path, model: str = "bundled") -> dict[str, list[dict[str, Any]]]:
    """{path: one row per (course, question), the courses in order}: each path's choices and answers.

    :param paths: name -> Settings fields (PATHS).
    :param parts: "choices" and/or "answers".
    :raises SystemExit: when `shared` holds no course.
    """
    from eval import courses_benchmark as cb
    from eval.raft_quiz_benchmark import model_rows

    from rag.api import get_embedder
    from rag.config import Settings

    settings = cb.default_pipeline()
    embedder = get_embedder(Settings())
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    with tempfile.TemporaryDirectory(prefix="rag-generation-quality-") as td:
        courses = cb.courses(shared, evidence, Path(td), False)
        if not courses:
            raise SystemExit(f"no course with a quiz.jsonl under {shared}")
        for course in courses:
            course.questions[:] = sample(course.questions, limit)
            for name, generation in paths.items():
                print(f"{name} on {course.name} ({len(course.questions)} items)", file=sys.stderr, flush=True)
                got = {}
                for part in parts:
                    if part == "answers":
                        got[part] = model_rows(course, name, model, embedder, settings, Path(td), cache, part, generation)
                    else:  # shared by the paths that differ only in how tokens are written
                        reading = {k: v for k, v in generation.items() if k not in DECODE_ONLY}
                        label = "-".join(str(v) for _, v in sorted(reading.items())) or "default"
                        got[part] = model_rows(course, label, model, embedder, settings, Path(td), cache, part, reading)
                for i, q in enumerate(course.questions):
                    row: dict[str, Any] = {"id": q["id"], "course": course.name, "right": {}}
                    if "choices" in got:
                        row["right"] = dict(got["choices"][i]["right"])
                    if "answers" in got:
                        row["answer"] = {k: v for k, v in got["answers"][i]["answer"].items() if k != "text"}
                        row["answer_seconds"] = got["answers"][i]["seconds"]
                    out[name].append(row)
    return out


def summarize(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per path, course and pooled: each way's mean with its interval; per path but the first: the paired
    difference from the first path, per course and pooled, and the no-loss verdict of each way."""
    from rag.evaluation.bootstrap import paired_comparison
    from rag.evaluation.courses import no_loss_verdict, with_interval

    base = next(iter(rows))
    courses = list(dict.fromkeys(r["course"] for r in rows[base]))
    groups = {**{c: [i for i, r in enumerate(rows[base]) if r["course"] == c] for c in courses},
              POOLED: list(range(len(rows[base])))}
    ways = [w for w in WAYS if all(score(r, w) is not None for rs in rows.values() for r in rs)]
    out: dict[str, Any] = {"base": base, "courses": courses, "ways": ways, "n": {g: len(ix) for g, ix in groups.items()},
                           "accuracy": {}, "vs_base": {}}
    for name, rs in rows.items():
        out["accuracy"][name] = {g: {w: with_interval([score(rs[i], w) for i in ix]) for w in ways}
                                 for g, ix in groups.items()}
        if name == base:
            continue
        deltas: dict[str, Any] = {}
        for w in ways:
            per = {g: paired_comparison([score(rs[i], w) for i in ix], [score(rows[base][i], w) for i in ix])
                   for g, ix in groups.items()}
            deltas[w] = {**per, "verdict": no_loss_verdict({c: per[c] for c in courses}, per[POOLED])}
        out["vs_base"][name] = deltas
    return out


def render(summary: dict[str, Any], paths: dict[str, dict[str, Any]]) -> str:
    """The quality section: accuracy per path and group, then each path minus the reference with its verdict."""
    from rag.evaluation.course_run import fmt_delta, fmt_interval

    ways, groups = summary["ways"], [*summary["courses"], POOLED]
    lines = ["## Answer quality of each path against fp32 (independent courses' own quizzes)", "",
             "Paths: " + "; ".join(f"`{n}` = {s}" for n, s in paths.items()) + ". Items per course: "
             + ", ".join(f"{g} {summary['n'][g]}" for g in groups) + ". Mean [95% bootstrap interval]; "
             "differences are paired over the same items. A path passes when no interval of (path − "
             f"{summary['base']}) lies wholly below zero.", "",
             "| path | items | " + " | ".join(LABELS[w] for w in ways) + " |", "|---|---|" + "---|" * len(ways)]
    for name, acc in summary["accuracy"].items():
        for g in groups:
            lines.append(f"| {name} | {g} | " + " | ".join(fmt_interval(acc[g][w]) for w in ways) + " |")
    for name, deltas in summary["vs_base"].items():
        lines += ["", f"`{name}` − `{summary['base']}`:", "", "| items | " + " | ".join(LABELS[w] for w in ways) + " |",
                  "|---|" + "---|" * len(ways)]
        for g in groups:
            lines.append(f"| {g} | " + " | ".join(fmt_delta(deltas[w][g]) for w in ways) + " |")
        lines.append("| verdict | " + " | ".join("passes" if deltas[w]["verdict"]["passes"] else
                                                 "FAILS (" + ", ".join(deltas[w]["verdict"]["courses_below_zero"]
                                                                       or [POOLED]) + ")" for w in ways) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The quality part's flags (shared with bench/generation.py)."""
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}; the first is "
                    "the reference")
    ap.add_argument("--parts", default="choices,answers", help="choices and/or answers")
    ap.add_argument("--limit", type=int, default=40, help="items per course, a seeded sample (0 = every item)")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "eval-courses")
    ap.add_argument("--evidence", type=Path, default=ROOT / "eval" / "courses")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "course-rag" / "generation-quality")


def run_quality(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Measure the chosen paths; returns (the JSON result, its markdown section).

    :raises SystemExit: for an unknown path or part.
    """
    names = [p.strip() for p in args.paths.split(",") if p.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [n for n in names if n not in PATHS] + [p for p in parts if p not in ("choices", "answers")]
    if unknown or not names or not parts:
        raise SystemExit(f"unknown or missing path/part: {unknown or 'none given'}; paths are {', '.join(PATHS)}, "
                         "parts are choices, answers")
    paths = {n: PATHS[n] for n in names}
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = path_rows(paths, parts, args.limit, args.shared, args.evidence, args.cache)
    summary = summarize(rows)
    return {"started": started, "paths": paths, "parts": parts, "limit": args.limit, "summary": summary,
            "rows": rows}, render(summary, paths)


def main(argv: list[str] | None = None) -> None:
    from bench.benchutil import LoadMeter, finish_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--tag", default="", help="write generation_quality_<tag>.* (a smoke run beside the kept one)")
    args = ap.parse_args(argv)
    whole, t_start = LoadMeter(), time.time()
    result, markdown = run_quality(args)
    finish_run(result, whole, t_start, lambda _: markdown,
               "generation_quality" + (f"_{args.tag}" if args.tag else ""))


if __name__ == "__main__":
    main()
