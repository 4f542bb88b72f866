"""Answer quality of the generators, grounded vs free, on the quiz set of the retrieval benchmark.

The course is indexed without its quiz files and without the asked items (rag.evaluation.sets.make_quiz_set);
each quiz question of QUESTIONS is asked. Per model: multiple-choice accuracy closed book and with the
retrieved passages (options ranked by log-likelihood per byte, rag.evaluation.end_to_end), then per answer
mode: EM/F1 of the short answer against the quiz explanation, quote validity (exact substring of a listed
passage at its span), whether the quote holds the question's evidence, time to first token and total time.
For the grounded mode the retriever weight of the quote choice is swept on the same candidates
(quote-holds-evidence at weights 0 / 0.25 / 0.5 / 0.75 / 1).

    python -m eval.answers_benchmark --models bundled,teacher --limit 12 --out eval/results/answers_benchmark
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--course", type=Path, default=ROOT / "corpus")
    ap.add_argument("--questions", type=Path, default=ROOT / "eval" / "dev_questions.jsonl")
    ap.add_argument("--models", default="bundled")
    ap.add_argument("--modes", default="grounded,free")
    ap.add_argument("--limit", type=int, default=0, help="first N questions (0 = all)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "answers_benchmark")
    ap.add_argument("--no-sweep", action="store_true", help="skip the quote-weight sweep (and quote-holds-evidence)")
    ap.add_argument("--with-options", action="store_true",
                    help="ask multiple-choice questions as a student pasting the quiz item: stem, then lettered options")
    args = ap.parse_args(argv)

    import numpy as np

    from rag.answering import grounding
    from rag.api import get_generator, make_chunker, make_pipeline, open_retriever
    from rag.config import Settings
    from rag.evaluation.end_to_end import score_mc  # the one MC scorer
    from rag.evaluation.metrics import exact_match, token_f1
    from rag.evaluation.retrieval import contains_evidence, load_questions
    from rag.evaluation.sets import make_quiz_set
    from rag.index.build import build_index
    from rag.index.embeddings import Embedder

    questions = load_questions(args.questions)
    if args.limit:
        questions = questions[: args.limit]
    report: dict = {"script": "eval/answers_benchmark.py", "args": {k: str(v) for k, v in vars(args).items()},
                    "models": {}}
    with tempfile.TemporaryDirectory(prefix="rag-answers-bench-") as td:
        work = Path(td)
        es = make_quiz_set(args.course, questions, work / "quiz")
        settings = Settings(index_dir=work / "index", corpus_dir=es.corpus, max_new_tokens=args.max_new_tokens)
        embedder = Embedder(settings.embed_model)
        build_index(es.corpus, settings.index_dir, embedder, make_chunker(embedder, settings))
        retriever = open_retriever(settings)
        for model in args.models.split(","):
            s = settings.model_copy(update={"model": model})
            gen = get_generator(s)
            pipe = make_pipeline(s, retriever=retriever, generator=gen)
            budget = min(gen.context_window, s.max_context_tokens)
            rows = []
            for q in questions:
                row: dict = {"id": q["id"]}
                hits = retriever.search(q["question"], k=s.top_k, mode=s.mode)
                if "options" in q:
                    mc = score_mc(gen, q, hits, s.top_k, budget, embedder, pipe.boilerplate())
                    row["mc_closed"], row["mc_rag"] = mc["closed_book"]["right"], mc["rag"]["right"]
                    row["mc_rag_plain"] = mc["rag_plain"]["right"]
                    row["mc_scores"] = {k: [o["per_byte"] for o in mc[k]["options"]] for k in ("closed_book", "rag_plain")}
                    row["mc_scores"]["support"] = mc["rag"]["support"]
                    row["mc_correct"] = mc["correct"]
                for mode in [m for m in args.modes.split(",") if m]:
                    gen.clear_prompt_cache()  # time each answer from a cold prompt, not the last mode's cache
                    t0 = time.perf_counter()
                    resp = pipe.ask(asked(q, args.with_options), answer_mode=mode)
                    first = None
                    for _ in resp:
                        if first is None:
                            first = time.perf_counter() - t0
                    ans = resp.answer()
                    total = time.perf_counter() - t0
                    pred = ans.short_answer or ans.text
                    r = {"ttft": first, "total": total, "abstained": ans.abstained,
                         "choice_right": (ans.choice.index in q["correct"]) if ans.choice else None,
                         "em": exact_match(pred, q["answer"]), "f1": token_f1(pred, q["answer"]),
                         "f1_with_quote": token_f1(ans.text, q["answer"]), "answer": ans.text}
                    if ans.quote is not None:
                        src = next(x for x in ans.sources if x.n == ans.quote.passage)
                        r["quote_valid"] = grounding.verify_quote(ans.quote, src.text)
                        r["quote_evidence"] = contains_evidence(ans.quote.text, q.get("evidence", []))
                        if not args.no_sweep:
                            cands, msc, retr = grounding.score_candidates(
                                gen, resp.plan.messages, q["question"], resp.plan.passages, embedder)
                            r["sweep"] = {}
                            for w in WEIGHTS:
                                best = cands[int(np.argmax(grounding.combine(msc, retr, w)))] if cands else None
                                r["sweep"][str(w)] = bool(best and contains_evidence(best[1], q.get("evidence", [])))
                    elif not ans.abstained:
                        # free mode: the answer's sentences matched to a passage (attribution), as its "quotes"
                        r["quote_valid"] = None
                    row[mode] = r
                rows.append(row)
                print(json.dumps(row)[:400], file=sys.stderr, flush=True)
            report["models"][model] = {"model_id": gen.model_id, "rows": rows, "summary": summarize(rows, args)}
            del gen, pipe
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    md = table(report)
    args.out.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)
    return 0


def asked(q: dict, with_options: bool) -> str:
    """The question as asked: the stem, or with --with-options the stem and its options lettered A., B., ..."""
    if not with_options or "options" not in q:
        return q["question"]
    return q["question"] + "\n\n" + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(q["options"]))


def _mean(xs: list) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    """Means over the questions: MC accuracy, and per mode EM/F1/quote validity/evidence/TTFT/total."""
    out = {"n": len(rows), "mc_closed": _mean([r.get("mc_closed") for r in rows]),
           "mc_rag": _mean([r.get("mc_rag") for r in rows]),
           "mc_rag_plain": _mean([r.get("mc_rag_plain") for r in rows])}
    for mode in [m for m in args.modes.split(",") if m]:
        rs = [r[mode] for r in rows if mode in r]
        out[mode] = {k: _mean([x.get(k) for x in rs]) for k in
                     ("em", "f1", "f1_with_quote", "quote_valid", "quote_evidence", "choice_right", "ttft", "total")}
        sweeps = [x["sweep"] for x in rs if "sweep" in x]
        if sweeps:
            out[mode]["sweep"] = {w: _mean([s[w] for s in sweeps]) for w in sweeps[0]}
    return out


def choice_accuracy(rows: list[dict], weight: float) -> float | None:
    """Multiple-choice accuracy with passages when the options' support and the model's scores are combined
    at `weight` (rag.answering.choices; 1.0 = support alone, 0.0 = the model's scores alone)."""
    from rag.answering.grounding import combine
    from rag.evaluation.end_to_end import mc_correct

    right = [mc_correct(list(combine(r["mc_scores"]["rag_plain"] if weight < 1.0 else None,
                                     r["mc_scores"]["support"], weight)), r["mc_correct"])
             for r in rows if "mc_scores" in r]
    return _mean(right)


def table(report: dict) -> str:
    """The README table (markdown)."""
    def f(v: float | None, d: int = 3) -> str:
        return "–" if v is None else f"{v:.{d}f}"

    lines = [("| model | mode | MC closed | MC with passages, model | MC with passages, grounded choice | EM | F1 | F1 (quote+answer) | "
              "quote valid | quote holds evidence | TTFT s | total s |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    sweep = []
    for name, m in report["models"].items():
        s = m["summary"]
        for mode, v in s.items():
            if not isinstance(v, dict):
                continue
            lines.append(f"| {name} | {mode} | {f(s['mc_closed'])} | {f(s.get('mc_rag_plain'))} | {f(s['mc_rag'])} | "
                         f"{f(v['em'])} | {f(v['f1'])} | "
                         f"{f(v['f1_with_quote'])} | {f(v['quote_valid'])} | {f(v['quote_evidence'])} | "
                         f"{f(v['ttft'], 1)} | {f(v['total'], 1)} |")
            if v.get("sweep"):
                sweep.append(f"| {name} | " + " | ".join(f(x) for x in v["sweep"].values()) + " |")
    lines += ["", "Multiple choice with passages by the support's weight in the choice (rag.answering.choices):", "",
              "| model | " + " | ".join(f"w={w}" for w in WEIGHTS) + " |", "|---|" + "---|" * len(WEIGHTS)]
    for name, m in report["models"].items():
        lines.append(f"| {name} | " + " | ".join(f(choice_accuracy(m["rows"], w)) for w in WEIGHTS) + " |")
    if sweep:
        lines += ["", "Quote holds the evidence, by retriever weight in the quote choice:", "",
                  "| model | " + " | ".join(f"w={w}" for w in WEIGHTS) + " |",
                  "|---|" + "---|" * len(WEIGHTS), *sweep]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
