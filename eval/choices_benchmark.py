"""Multiple choice on the independent courses: the product's choice against closed book and against the
previous choice, per course and pooled, with 95% bootstrap intervals and paired deltas, in one run.

Ways of answering, on the same questions and the same passages (the product's retrieval of each quiz item,
cut to what fits the bundled model's window as the product cuts it):

* closed book: the bundled model's option log-likelihoods with no passages (lm-evaluation-harness acc_norm);
* model with passages: the same with the passages in the prompt;
* previous choice: each bare option's best cosine with a sentence of the passages (the product before
  claims);
* claims, no rules: each option written into its stem as a claim (`choices.claim`), its best cosine;
* product: `rag.answering.choices.pick_option` as the product calls it (claims, the "all / none of the
  above" rules, true/false).

A quiz item counts as right only when the chosen set is the key's set. The model's two ways come from the
courses benchmark's cache (`eval/courses_benchmark.py --choices`; computed here when missing, ~5-10 s a
question on 2 cores); the choices are recomputed each run (embedder only, and the model for true/false items).

The gate (issue "answers that use the passages"): the product beats closed book by at least 10 points pooled
with a paired interval above zero, and is not below closed book on any course beyond its interval.

Run (from the project folder):
    . .venv/bin/activate
    python -m eval.choices_benchmark      # writes eval/results/courses/choices_benchmark.{md,json}
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WAYS = ("closed_book", "rag_plain", "previous", "claims", "product")
LABELS = {"closed_book": "closed book", "rag_plain": "model with passages", "previous": "previous choice (bare options)",
          "claims": "claims, no rules", "product": "product's choice"}


def course_rows(course: Any, embedder: Any, settings: dict[str, Any], cache: Path, work: Path,
                generator: Any) -> list[dict[str, Any]]:
    """One row per question of `course`: {"id", "course", "kind", "right": {way: bool}, "rule"}; `generator`
    is the model the product's choice asks (true/false items)."""
    from eval import courses_benchmark as cb

    from rag.answering.choices import (
        Choice, asks_for_several, claim, claim_support, is_true_false, option_kind, option_support, pick_option,
        restated_options,
    )
    from rag.answering.grounding import boilerplate_sentences

    raw = getattr(embedder, "embedder", embedder)  # the index is built with the embedder itself
    retriever = cb.product_retriever(course, raw, settings, work)
    lm_rows = {r["id"]: r for r in cb.cached_choice_rows(course, raw, settings, cache, work)}
    boilerplate = boilerplate_sentences(g.text for g in retriever.passages().passages)
    search = cb.product_searcher(retriever, settings, 10)
    out = []
    for q in course.questions:
        mc = lm_rows[q["id"]]["mc"]
        texts = [h.chunk.text for h in search(q)[: mc["rag_plain"]["passages"]]]
        options, key = list(q["options"]), set(q["correct"])
        exclude = boilerplate | restated_options(texts, [*options, q["question"]])
        bare = option_support(options, texts, embedder, exclude)
        claims = claim_support([claim(q["question"], o) for o in options], texts, embedder, exclude)
        choice = Choice(q["question"], tuple(options), tuple(chr(65 + i) for i in range(len(options))),
                        asks_for_several(q["question"]))
        picked = pick_option(generator, [], choice, texts, embedder, 1.0, boilerplate)
        kinds = {option_kind(o) for o in options}
        kind = "true/false" if is_true_false(options) else "all/none of the above" if kinds - {"plain"} else "plain"
        out.append({"id": q["id"], "course": course.name, "kind": kind, "rule": picked.rule, "picked": picked.to_dict(),
                    "right": {"closed_book": bool(mc["closed_book"]["right"]), "rag_plain": bool(mc["rag_plain"]["right"]),
                              "previous": _argmax_right(bare, key), "claims": _argmax_right(claims, key),
                              "product": set(picked.chosen) == key}})
    return out


class MemoEncoder:
    """The embedder with a memory of every text it encoded: a quiz's questions share passages, so the same
    sentences would otherwise be encoded once per way and question (vectors are identical either way)."""

    def __init__(self, embedder: Any) -> None:
        self.embedder, self.memory = embedder, {}

    def encode(self, texts: list[str], **kw: Any) -> Any:
        import numpy as np

        missing = list(dict.fromkeys(t for t in texts if t not in self.memory))
        if missing:
            self.memory.update(zip(missing, np.asarray(self.embedder.encode(missing, **kw))))
        return np.stack([self.memory[t] for t in texts]) if texts else np.zeros((0, 0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.embedder, name)


def code_stamp() -> str:
    """SHA-256 of the code that makes the product's choice (choices.py, grounding.py and its sentence rules):
    a cached row is reused only while that code is unchanged."""
    import hashlib

    h = hashlib.sha256()
    for name in ("choices.py", "grounding.py", "sentences.py"):
        path = ROOT / "rag" / "answering" / name
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()[:16]


def _argmax_right(scores: list[float], key: set[int]) -> bool:
    """Right when the single best score (no tie) is the key's only option."""
    best = max(scores)
    top = [i for i, s in enumerate(scores) if s == best]
    return len(top) == 1 and {top[0]} == key


def summarize(rows: list[dict[str, Any]], courses: list[str], shipped: str) -> dict[str, Any]:
    """Accuracy of each way per course, pooled over the independent courses, and by item kind; each way
    minus closed book and the product minus the previous choice, paired."""
    from rag.evaluation.bootstrap import paired_comparison
    from rag.evaluation.courses import with_interval

    def block(sel: list[dict[str, Any]]) -> dict[str, Any]:
        right = {w: [float(r["right"][w]) for r in sel] for w in WAYS}
        return {"n": len(sel), "accuracy": {w: with_interval(v) for w, v in right.items()},
                "vs_closed_book": {w: paired_comparison(right[w], right["closed_book"]) for w in WAYS[1:]},
                "product_vs_previous": paired_comparison(right["product"], right["previous"])}

    independent = [r for r in rows if r["course"] != shipped]
    out: dict[str, Any] = {"per_course": {c: block([r for r in rows if r["course"] == c]) for c in courses},
                           "pooled": block(independent),
                           "by_kind": {k: block([r for r in independent if r["kind"] == k])
                                       for k in sorted({r["kind"] for r in independent})}}
    pooled = out["pooled"]["vs_closed_book"]["product"]
    if pooled["mean_delta"] is None:  # only the shipped course was scored: nothing decides
        out["gate"] = {"pooled_delta": None, "pooled_ci": None, "passes": False, "courses_below_closed_book": []}
        return out
    losing = [c for c in courses if c != shipped and (out["per_course"][c]["vs_closed_book"]["product"]["ci"] or [0, 0])[1] < 0]
    out["gate"] = {"pooled_delta": pooled["mean_delta"], "pooled_ci": pooled["ci"],
                   "passes": pooled["mean_delta"] >= 0.10 and pooled["ci"][0] > 0 and not losing,
                   "courses_below_closed_book": losing}
    return out


def _cell(c: dict[str, Any]) -> str:
    from rag.evaluation.course_run import fmt_interval

    return fmt_interval(c)


def _delta(c: dict[str, Any]) -> str:
    from rag.evaluation.course_run import fmt_delta

    return fmt_delta(c)


def report_markdown(result: dict[str, Any]) -> str:
    """The tables: accuracy per way, the deltas against closed book and the previous choice, the gate."""
    lines = ["# Multiple choice on the independent courses", "",
             f"Closed book and model with passages: the bundled model; the product's choice asks {result['model']} "
             f"(true/false items). Product retrieval; right = the chosen set is the key's set. {result['started']}", ""]
    groups = [(f"course {c}", b) for c, b in result["summary"]["per_course"].items()]
    groups += [("pooled (independent)", result["summary"]["pooled"])]
    groups += [(f"pooled, {k} items", b) for k, b in result["summary"]["by_kind"].items()]
    lines += ["| set | n | " + " | ".join(LABELS[w] for w in WAYS) + " |", "|---|---|" + "---|" * len(WAYS)]
    for name, b in groups:
        lines.append(f"| {name} | {b['n']} | " + " | ".join(_cell(b["accuracy"][w]) for w in WAYS) + " |")
    lines += ["", "| set | n | " + " | ".join(f"{LABELS[w]} − closed book" for w in WAYS[1:]) + " | product − previous |",
              "|---|---|" + "---|" * len(WAYS)]
    for name, b in groups:
        lines.append(f"| {name} | {b['n']} | " + " | ".join(_delta(b["vs_closed_book"][w]) for w in WAYS[1:])
                     + f" | {_delta(b['product_vs_previous'])} |")
    g = result["summary"]["gate"]
    if g["pooled_delta"] is None:
        return "\n".join(lines)
    lines += ["", f"Gate (≥ +0.10 pooled over closed book, interval above zero, no course below): "
              f"{'passes' if g['passes'] else 'fails'}; pooled {g['pooled_delta']:+.3f} "
              f"[{g['pooled_ci'][0]:+.3f}, {g['pooled_ci'][1]:+.3f}]", "",
              "Rules the product used (independent courses): " + ", ".join(f"{k} {v}" for k, v in result["rules"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    from eval import courses_benchmark as cb

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cb.add_course_arguments(ap)
    ap.add_argument("--no-shipped", action="store_true", help="leave out the shipped course")
    ap.add_argument("--only", default="", help="score only the course whose name starts with this (rows are cached; "
                    "a later run without --only reads them)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "courses")
    ap.add_argument("--model", default="bundled",
                    help="the model the product's choice asks for true/false items (bundled, bundled-raft, teacher)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "course-rag" / "courses-bench")
    args = ap.parse_args()

    from collections import Counter

    from rag.api import get_embedder, get_generator
    from rag.config import Settings

    started = time.strftime("%Y-%m-%d %H:%M")
    settings = cb.default_pipeline()
    embedder = MemoEncoder(get_embedder(Settings()))
    generator = get_generator(Settings(model=args.model))
    rows: list[dict[str, Any]] = []
    names = []
    with tempfile.TemporaryDirectory(prefix="rag-choices-bench-") as td:
        for course in cb.courses(args.shared, args.evidence, Path(td), not args.no_shipped):
            if args.only and not course.name.startswith(args.only):
                continue
            print(f"{course.name}: {len(course.questions)} questions", file=sys.stderr, flush=True)
            names.append(course.name)
            key = {"course": course.name, "model": args.model, "settings": settings, **cb.versions(),
                   "code": code_stamp(), "v": 1}
            rows += cb.cached(args.cache / course.name.split(" ")[0] / "product-choices", key,
                              lambda course=course: course_rows(course, embedder, settings, args.cache, Path(td), generator))
    result = {"started": started, "model": args.model, "settings": settings, "versions": cb.versions(),
              "summary": summarize(rows, names, cb.SHIPPED),
              "rules": dict(Counter(r["rule"] for r in rows if r["course"] != cb.SHIPPED)), "rows": rows}
    stem = "choices_benchmark" if args.model == "bundled" else f"choices_benchmark_{args.model}"
    cb.save_report(args.out, stem, result, report_markdown(result))


if __name__ == "__main__":
    main()
