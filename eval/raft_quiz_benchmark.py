"""RAFT on a quiz that people wrote: the base model, RAFT-tuned models and the DSF baseline, each through the
product on an independent course's own quiz, per model with 95% bootstrap intervals and paired deltas.

The tuned models are made from the course's lessons only (`raft course` / `raft train`); the quiz never
enters their training data. Every model sees the same questions and the same passages (the product's
retrieval of each quiz item, cut to what fits the model's window), and is scored four ways:

* closed book: the model's option log-likelihoods per byte without passages (forgetting shows here);
* model with passages: the same with the product's passages in the prompt (the model's own reading);
* product's choice: `rag.answering.choices.pick_option` as the product calls it (claims, the all/none rules,
  the model for true/false items);
* answer: the product answers the question's stem alone (no options) as a student would ask it
  (`RagPipeline.ask`, the model's own prompt format); the answer is right when, of the options, the key is
  the one closest to the answer (cosine of the product's embedder); token F1 with the key's text is
  reported beside it.

Right = the chosen set is the key's set. Rows are kept per (course, model, question) in --cache (outside the
repository: they hold course text), so a killed run resumes at the next question.

Run (from the project folder; a few seconds a question and model on 2 cores, the answers the most):
    . .venv/bin/activate
    python -m eval.raft_quiz_benchmark --course ai \\
        --models base=bundled,raft=RUN/train,dsf=RUN/dsf --answers base,raft,dsf
Writes --out/raft_quiz_benchmark.{md,json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WAYS = ("closed_book", "rag_plain", "product", "answer")
LABELS = {"closed_book": "closed book", "rag_plain": "model with passages", "product": "product's choice",
          "answer": "answer → key closest"}


def model_stamp(spec: str) -> str:
    """A short hash of what a model spec names: the spec and, for a folder, the sizes and times of its files,
    training checkpoints left out (a re-trained model in the same folder gets new rows)."""
    h = hashlib.sha256(spec.encode())
    path = Path(spec)
    if path.exists():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and "checkpoints" not in p.relative_to(path).parts):
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def numerics(generation: dict[str, Any] | None = None) -> dict[str, str]:
    """How the model's numbers are computed under `generation` and the environment (RAG_DECODER,
    RAG_PREFILL_DTYPE; "auto" resolved on this CPU): part of every cache key, so rows computed one way are never
    served for another."""
    from rag.config import Settings
    from rag.generation.decoder import resolve_decoder
    from rag.generation.models import resolve_prefill_dtype

    s = Settings(**(generation or {}))
    return {"decoder": resolve_decoder(s.decoder), "prefill_dtype": resolve_prefill_dtype(s.prefill_dtype)}


def answer_row(pipe: Any, q: dict[str, Any], embedder: Any) -> dict[str, Any]:
    """The product's answer to the stem alone, and which option it is closest to."""
    import numpy as np

    from rag.evaluation.metrics import token_f1

    stream = pipe.ask(q["question"])
    text = "".join(stream)
    answer = stream.answer()
    vecs = np.asarray(embedder.encode([text or " ", *q["options"]]), dtype=np.float32)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    sims = [float(v) for v in vecs[1:] @ vecs[0]]
    best = max(range(len(sims)), key=sims.__getitem__)
    key = q["correct"]
    return {"text": text, "answer_mode": answer.answer_mode, "abstained": answer.abstained, "closest": best,
            "similarity": sims, "right": len(key) == 1 and best == key[0],
            "f1_key": token_f1(answer.short_answer or text, q["options"][key[0]])}


def resumed_rows(path: Path) -> dict[str, dict[str, Any]]:
    """{question id: row} already in a JSONL cache file; a torn last line (killed mid-write) is asked again."""
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            done[row["id"]] = row
    return done


def product_parts(course: Any, spec: str, embedder: Any, settings: dict[str, Any], work: Path,
                  generation: dict[str, Any] | None = None) -> tuple[Any, Any, Any, int, Any]:
    """What asking `spec` about `course` through the product takes: (the run's Settings, the generator, the
    pipeline, the prompt budget in tokens, question row -> the product's passages)."""
    from eval import courses_benchmark as cb

    from rag.api import get_generator, make_pipeline
    from rag.config import Settings

    retriever = cb.product_retriever(course, embedder, settings, work)
    run = Settings(index_dir=retriever.index_dir, corpus_dir=course.lessons, model=spec,
                   **{k: v for k, v in settings.items() if k in cb.SETTINGS}, mode=settings.get("mode", "hybrid"),
                   **(generation or {}))
    generator = get_generator(run)
    pipe = make_pipeline(run, retriever=retriever, generator=generator)
    return (run, generator, pipe, min(generator.context_window, run.max_context_tokens),
            cb.product_searcher(retriever, settings, run.top_k))


def model_rows(course: Any, name: str, spec: str, embedder: Any, settings: dict[str, Any], work: Path,
               cache: Path, part: str, generation: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of one model on `course` for `part` ("choices": the three multiple-choice ways; "answers": the
    product's answer to the stem), resumed from `cache` question by question.

    :param generation: Settings fields of how the model runs (e.g. {"prefill_dtype": "bfloat16"}; bench/
        generation_quality.py's paths), part of the cache key when given.
    """
    from eval import courses_benchmark as cb

    from rag.common.progress import progress_bar
    from rag.evaluation.end_to_end import score_mc

    key = {"course": course.name, "spec": spec, "model": model_stamp(spec), "settings": settings, **cb.versions(),
           "part": part, "v": 3, **({"generation": generation} if generation else {}),
           "numerics": numerics(generation)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / course.name.split(" ")[0] / f"raft-quiz-{part}-{name}-{digest}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = resumed_rows(path)
    todo = [q for q in course.questions if q["id"] not in done]
    if todo:
        run, generator, pipe, budget, search = product_parts(course, spec, embedder, settings, work, generation)
        with path.open("a", encoding="utf-8") as out:
            for q in progress_bar(todo, total=len(todo), desc=f"{name} {part} on {course.name}", unit="question"):
                t0 = time.perf_counter()
                if part == "answers":
                    row = {"id": q["id"], "answer": answer_row(pipe, q, embedder)}
                else:
                    mc = score_mc(generator, q, search(q), run.top_k, budget, embedder, pipe.boilerplate(),
                                  weight=run.choice_retriever_weight)
                    row = {"id": q["id"], "right": {"closed_book": bool(mc["closed_book"]["right"]),
                                                    "rag_plain": bool(mc["rag_plain"]["right"]),
                                                    "product": bool(mc["rag"]["right"])},
                           "rule": mc["rag"].get("rule")}
                row["seconds"] = round(time.perf_counter() - t0, 2)
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                done[q["id"]] = row
    return [done[q["id"]] for q in course.questions]


def merged_rows(choices: list[dict[str, Any]], answers: list[dict[str, Any]] | None, name: str,
                course: str) -> list[dict[str, Any]]:
    """One row per question: the choice ways' `right`, with the answer's (and the answer) when measured."""
    out = []
    for i, c in enumerate(choices):
        row = {"id": c["id"], "course": course, "model": name, "right": dict(c["right"]), "rule": c.get("rule")}
        if answers is not None:
            row["answer"] = answers[i]["answer"]
            row["right"]["answer"] = row["answer"]["right"]
        out.append(row)
    return out


def summarize(rows: dict[str, list[dict[str, Any]]], base: str) -> dict[str, Any]:
    """Accuracy of each model and way with intervals; each model minus `base`, paired, per way; answer F1."""
    from rag.evaluation.bootstrap import paired_comparison
    from rag.evaluation.courses import with_interval

    out: dict[str, Any] = {"accuracy": {}, "vs_base": {}, "f1_key": {}}
    for name, rs in rows.items():
        ways = [w for w in WAYS if all(w in r["right"] for r in rs)]
        out["accuracy"][name] = {w: with_interval([float(r["right"][w]) for r in rs]) for w in ways}
        if "answer" in ways:
            out["f1_key"][name] = with_interval([r["answer"]["f1_key"] for r in rs])
        if name != base:
            out["vs_base"][name] = {w: paired_comparison([float(r["right"][w]) for r in rs],
                                                         [float(r["right"][w]) for r in rows[base]])
                                    for w in ways if all(w in r["right"] for r in rows[base])}
            if "answer" in ways and base in out["f1_key"]:
                out["vs_base"][name]["f1_key"] = paired_comparison([r["answer"]["f1_key"] for r in rs],
                                                                   [r["answer"]["f1_key"] for r in rows[base]])
    return out


def pairs(rows: dict[str, list[dict[str, Any]]], comparisons: list[tuple[str, str]]) -> dict[str, Any]:
    """Named paired comparisons (a − b per way) for the ablations: e.g. RAFT P = 0.8 vs P = 1.0."""
    from rag.evaluation.bootstrap import paired_comparison

    out = {}
    for a, b in comparisons:
        if a in rows and b in rows:
            ways = [w for w in WAYS if all(w in r["right"] for r in rows[a] + rows[b])]
            out[f"{a} − {b}"] = {w: paired_comparison([float(r["right"][w]) for r in rows[a]],
                                                      [float(r["right"][w]) for r in rows[b]]) for w in ways}
    return out


def report_markdown(result: dict[str, Any]) -> str:
    """Accuracy per model and way, each model minus the base, and the ablation pairs."""
    from rag.evaluation.course_run import fmt_delta, fmt_interval

    s = result["summary"]
    lines = [f"# RAFT on a human quiz: {result['course']} ({result['n']} questions)", "",
             f"{result['started']}; models: " + ", ".join(f"`{k}` = {v}" for k, v in result["models"].items()) + ".",
             "Mean [95% percentile bootstrap interval]; deltas are paired over the same questions. Right = the "
             "chosen set is the key's set; answer: the key is the option closest to the product's answer to the stem.",
             "", "| model | " + " | ".join(LABELS[w] for w in WAYS) + " | answer F1 with the key |",
             "|---|" + "---|" * (len(WAYS) + 1)]
    for name, acc in s["accuracy"].items():
        lines.append(f"| {name} | " + " | ".join(fmt_interval(acc[w]) if w in acc else "–" for w in WAYS)
                     + f" | {fmt_interval(s['f1_key'][name]) if name in s['f1_key'] else '–'} |")
    lines += ["", f"Each model minus `{result['base']}`:", "",
              "| model | " + " | ".join(LABELS[w] for w in WAYS) + " | answer F1 |", "|---|" + "---|" * (len(WAYS) + 1)]
    for name, d in s["vs_base"].items():
        lines.append(f"| {name} − {result['base']} | " + " | ".join(fmt_delta(d[w]) if w in d else "–" for w in WAYS)
                     + f" | {fmt_delta(d['f1_key']) if 'f1_key' in d else '–'} |")
    if result["pairs"]:
        lines += ["", "Ablations and the DSF baseline (a − b):", "",
                  "| pair | " + " | ".join(LABELS[w] for w in WAYS) + " |", "|---|" + "---|" * len(WAYS)]
        for pair, d in result["pairs"].items():
            lines.append(f"| {pair} | " + " | ".join(fmt_delta(d[w]) if w in d else "–" for w in WAYS) + " |")
    return "\n".join(lines) + "\n"


def parse_models(text: str) -> dict[str, str]:
    """"name=spec,name=spec" -> {name: spec}; a bare spec is its own name."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, spec = part.partition("=")
        out[name.strip()] = (spec or name).strip()
    return out


def main() -> None:
    from eval import courses_benchmark as cb

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cb.add_course_arguments(ap)
    ap.add_argument("--course", default="ai", help="the course folder under --shared")
    ap.add_argument("--models", default="base=bundled", help="name=model spec, comma-separated; the first is the base")
    ap.add_argument("--answers", default="", help="models whose answers are generated (comma-separated names; "
                    "default: none)")
    ap.add_argument("--pairs", default="raft:dsf,raft:raft-p1,raft:raft-random",
                    help="a:b comparisons beside each model − base (names absent from --models are skipped)")
    ap.add_argument("--limit", type=int, default=0, help="first N questions only (a smoke run; decides nothing)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "raft_quiz")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "course-rag" / "raft-quiz")
    args = ap.parse_args()

    from eval.choices_benchmark import MemoEncoder

    from rag.api import get_embedder
    from rag.config import Settings

    models = parse_models(args.models)
    base = next(iter(models))
    answers = [a for a in args.answers.split(",") if a in models]
    started = time.strftime("%Y-%m-%d %H:%M")
    settings = cb.default_pipeline()
    embedder = MemoEncoder(get_embedder(Settings()))
    raw = getattr(embedder, "embedder", embedder)
    with tempfile.TemporaryDirectory(prefix="rag-raft-quiz-") as td:
        course = next((c for c in cb.courses(args.shared, args.evidence, Path(td), False)
                       if c.name.startswith(args.course)), None)
        if course is None:
            raise SystemExit(f"no course {args.course!r} under {args.shared}")
        if args.limit:
            course.questions[:] = course.questions[: args.limit]
        rows, choices_of = {}, {}
        for name, spec in models.items():
            print(f"{name} ({spec}) on {course.name}", file=sys.stderr, flush=True)
            choices = model_rows(course, name, spec, raw, settings, Path(td), args.cache, "choices")
            choices_of[name] = choices
            rows[name] = merged_rows(choices, None, name, course.name)
        for name, spec in models.items():  # the answers after every model's choices: they take the longest
            if name in answers:
                said = model_rows(course, name, spec, raw, settings, Path(td), args.cache, "answers")
                rows[name] = merged_rows(choices_of[name], said, name, course.name)
    comparisons = [tuple(p.split(":", 1)) for p in args.pairs.split(",") if ":" in p]
    # the answers quote the course: its text stays in --cache, the repository gets scores only
    public = {name: [{**r, "answer": {k: v for k, v in r["answer"].items() if k != "text"}} if "answer" in r else r
                     for r in rs] for name, rs in rows.items()}
    result = {"started": started, "course": course.name, "n": len(course.questions), "models": models, "base": base,
              "settings": settings, "versions": cb.versions(), "summary": summarize(rows, base),
              "pairs": pairs(rows, comparisons), "rows": public}
    cb.save_report(args.out, "raft_quiz_benchmark", result, report_markdown(result))


if __name__ == "__main__":
    main()
