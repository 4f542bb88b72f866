"""Does the grounded answer's quote hold the evidence? The quote choice of each candidate-span setting
(`rag.answering.grounding.SPAN_MODES`), old and new in one run, on the independent courses of
../shared/eval-courses, per course and pooled, with 95% bootstrap intervals and paired deltas.

For every quiz question with annotated evidence (eval/courses/*.evidence.jsonl): the product's index of the
course (the current default settings), its passages for the question as the product retrieves them
(`rag.evaluation.retrieval.product_search`), the product's abstention check, prompt fitting and boilerplate
exclusion (`RagPipeline`), then `grounding.choose_quote` asked with the question's stem only (a student's
question, not the options), once per span setting, on two paths:

* model: the product's path with an in-process model: the bundled model's scores of the retriever's best
  candidates combined with the retriever's (`RETRIEVER_WEIGHT`); the model is the one `model = auto` picks
  for the course. Scores are cached per candidate (rag.evaluation.quotes.CachedScorer), so the settings
  share them and an interrupted run resumes;
* retriever: the retriever's score alone (a model without log-probabilities: an HTTP server).

Scores per question (rag.evaluation.quotes): `holds` = the quote overlaps an annotated evidence span of its
lesson file by at least half of the shorter of the two (0 when the product abstains or quotes nothing);
`not_statement` = the quote is, or overlaps, a heading, title, label, question, fragment or code line of its
passage. `holds | retrieved` restricts `holds` to the questions whose passages hold the evidence.

The decision rule (standards): a setting replaces the default when `holds` on the model path wins pooled
(paired interval above zero) and loses on no course beyond its interval (`courses.rule_verdict`).

Run (from the project folder; the model path takes a few seconds a question on 2 cores):
    . .venv/bin/activate
    python -m eval.quotes_benchmark                 # both courses, both paths
    python -m eval.quotes_benchmark --no-model      # retriever path only (a minute)
    python -m eval.quotes_benchmark --students      # + the shipped course's student questions, old vs new quote
Writes --out/quotes_benchmark.md and .json (figures only: no course text).
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

BASELINE = "lines"  # the quote candidates before this benchmark
PATHS = ("model", "retriever")
DECIDING = "holds"
STUDENT_QUESTIONS = ROOT / "eval" / "student_questions.txt"


def question_rows(course: Any, evidence: dict[str, list], pipe: Any, scorer: Any, paths: tuple[str, ...],
                  limit: int | None) -> list[dict[str, Any]]:
    """One row per question with evidence: per path and span setting, the chosen quote's scores.

    :param course: the Course (rag.evaluation.courses).
    :param evidence: {question id: [EvidenceSpan]} (rag.evaluation.courses.load_evidence_spans).
    :param pipe: a RagPipeline over the course's index (retrieval, abstention, prompt fitting, boilerplate).
    :param scorer: the model's cached scorer (rag.evaluation.quotes.CachedScorer).
    :param paths: the paths to run (PATHS).
    :param limit: stop after this many questions (None = all).
    :returns: rows {"id", "course", "retrieved", "abstained", "quotes": {path: {spans: {...}}}}.
    """
    from rag.answering import grounding
    from rag.answering.window import fit_prompt
    from rag.evaluation.retrieval import contains_evidence, product_search

    lessons: dict[str, str] = {}
    embedder = MemoEmbedder(pipe.retriever.embedder)
    questions = [q for q in course.questions if str(q["id"]) in evidence][:limit]
    rows, started = [], time.time()
    planner = pipe.planner()
    for n, q in enumerate(questions, start=1):
        spans = evidence[str(q["id"])]
        stem = q["question"]
        hits = product_search(pipe.retriever, q, pipe.top_k, pipe.mode)
        row: dict[str, Any] = {"id": q["id"], "course": course.name,
                               "abstained": planner.should_abstain(stem, hits), "quotes": {}}
        used, messages = ([], []) if row["abstained"] else fit_prompt(
            stem, hits, [], pipe.generator, params=pipe.params, max_context_tokens=pipe.max_context_tokens,
            small_model=bool(pipe.small_model))
        texts = [h.chunk.text for h in used]
        row["retrieved"] = any(contains_evidence(t, [e.text for e in spans]) for t in texts)
        if texts and "model" in paths:  # every setting's candidates the model will score, in one prompt pass
            prefetch(scorer, messages, stem, texts, embedder, pipe.boilerplate())
        for path in paths:
            row["quotes"][path] = {}
            for mode in grounding.SPAN_MODES:
                quote = None if not texts else grounding.choose_quote(
                    scorer, messages, stem, texts, embedder, exclude=pipe.boilerplate(), spans=mode,
                    weight=grounding.RETRIEVER_WEIGHT if path == "model" else 1.0, use_model=path == "model")
                row["quotes"][path][mode] = score_quote(quote, used, spans, lessons, course.lessons)
        rows.append(row)
        if n % 10 == 0 or n == len(questions):
            print(f"  {course.name}: {n}/{len(questions)} questions ({time.time() - started:.0f} s, "
                  f"{getattr(scorer, 'scored', 0)} candidates scored by the model)", file=sys.stderr, flush=True)
    return rows


def prefetch(scorer: Any, messages: list[dict], question: str, texts: list[str], embedder: Any, exclude: Any) -> None:
    """Score at once the candidates `choose_quote` will ask the model about under every span setting (the
    retriever's MAX_SCORED best of each), so that the prompt is read once a question, not once a setting."""
    from rag.answering import grounding

    wanted: list[str] = []
    for mode in grounding.SPAN_MODES:
        cands, _, retr = grounding.score_candidates(None, messages, question, texts, embedder, use_model=False,
                                                    exclude=exclude, spans=mode)
        if len(cands) > 1:
            top = sorted(range(len(cands)), key=lambda i: -retr[i])[:grounding.MAX_SCORED]
            wanted += [" ".join(cands[i][1].split()) for i in sorted(top)]
    if wanted:
        prefix = grounding.GUIDED_REASON.format(question=" ".join(question.split())) + grounding.BEGIN_QUOTE
        scorer.score_continuations(messages, prefix, list(dict.fromkeys(wanted)))


class MemoEmbedder:
    """The retriever's embedder, each text encoded once a run (the span settings and paths share sentences)."""

    def __init__(self, embedder: Any):
        self.embedder = embedder
        self.vectors: dict[str, Any] = {}

    def encode(self, texts: list[str]) -> Any:
        """As `Embedder.encode`: (len(texts), dim) unit vectors."""
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.embedder.encode(missing)))
        if len(self.vectors) > 50_000:
            self.vectors.clear()
        return np.stack([self.vectors[t] if t in self.vectors else self.embedder.encode([t])[0] for t in texts])


def score_quote(quote: Any, used: list, spans: list, lessons: dict[str, str], folder: Path) -> dict[str, Any]:
    """{"holds", "kind", "chars", "located"} of one chosen quote (None: nothing quoted).

    :param lessons: lesson texts read so far, by file (filled as files are read).
    """
    from rag.evaluation.quotes import MIN_SHARE, evidence_share, holds_by_words, holds_evidence, locate, quote_kind
    from rag.common.text import read_text

    if quote is None:
        return {"holds": 0.0, "precise": 0.0, "kind": None, "chars": 0, "located": True}
    chunk = used[quote.passage - 1].chunk
    if chunk.source not in lessons:
        lessons[chunk.source] = read_text(folder / chunk.source, "lesson file").replace("\r\n", "\n").replace("\r", "\n")
    where = locate(quote.text, lessons[chunk.source], chunk.span[0] + quote.start)
    holds = holds_evidence(where, chunk.source, spans) if where else holds_by_words(quote.text, spans)
    precise = evidence_share(where, chunk.source, spans) >= MIN_SHARE if where else holds
    return {"holds": float(holds), "precise": float(precise), "kind": quote_kind(chunk.text, quote.start, quote.end),
            "chars": len(" ".join(quote.text.split())), "located": where is not None}


def course_pipeline(course: Any, embedder: Any, settings: dict[str, Any], work: Path) -> Any:
    """A RagPipeline over the course's product index with `settings` and the model `model = auto` picks."""
    from eval.courses_benchmark import SETTINGS, product_retriever

    from rag.answering.pipeline import RagPipeline
    from rag.api import get_generator
    from rag.config import Settings

    retriever = product_retriever(course, embedder, settings, work)
    run = Settings(index_dir=retriever.index_dir, corpus_dir=course.lessons,
                   **{k: v for k, v in settings.items() if k in SETTINGS}, mode=settings.get("mode", "hybrid"))
    return RagPipeline(retriever, get_generator(run), top_k=run.top_k, mode=run.mode,
                       abstain_threshold=run.abstain_threshold, abstain_coverage=run.abstain_coverage)


def summarize(rows: dict[str, list[dict[str, Any]]], paths: tuple[str, ...]) -> dict[str, Any]:
    """Per course and pooled: each setting's rates with intervals, and each setting minus BASELINE (paired)."""
    from rag.answering import grounding
    from rag.evaluation.bootstrap import paired_comparison
    from rag.evaluation.courses import rule_verdict, with_interval

    def values(rs: list[dict], path: str, mode: str, metric: str) -> list[float]:
        cells = [r["quotes"][path][mode] for r in rs]
        if metric == "holds":
            return [c["holds"] for c in cells]
        if metric == "precise":
            return [c["precise"] for c in cells]
        if metric == "holds | retrieved":
            return [c["holds"] for c, r in zip(cells, rs) if r["retrieved"]]
        if metric == "not_statement":
            return [float(c["kind"] not in (None, "sentence")) for c in cells]
        return [float(c["chars"]) for c in cells if c["kind"] is not None]  # chars

    groups = {**rows, "pooled": [r for rs in rows.values() for r in rs]}
    metrics = ("holds", "holds | retrieved", "precise", "not_statement", "chars")
    out: dict[str, Any] = {"tables": {}, "paired": {}, "rule": {}, "counts": {}}
    for path in paths:
        out["tables"][path] = {g: {m: {metric: with_interval(values(rs, path, m, metric)) for metric in metrics}
                                   for m in grounding.SPAN_MODES} for g, rs in groups.items()}
        out["paired"][path] = {g: {m: {metric: paired_comparison(values(rs, path, m, metric), values(rs, path, BASELINE, metric))
                                       for metric in metrics[:4]} for m in grounding.SPAN_MODES if m != BASELINE}
                               for g, rs in groups.items()}
        out["rule"][path] = {m: rule_verdict({c: out["paired"][path][c][m][DECIDING] for c in rows},
                                             out["paired"][path]["pooled"][m][DECIDING])
                             for m in grounding.SPAN_MODES if m != BASELINE}
        out["counts"][path] = {g: {m: {"kinds": _kinds(rs, path, m),
                                       "unlocated": sum(1 for r in rs if not r["quotes"][path][m]["located"])}
                                   for m in grounding.SPAN_MODES} for g, rs in groups.items()}
    out["n"] = {g: {"questions": len(rs), "retrieved": sum(r["retrieved"] for r in rs),
                    "abstained": sum(r["abstained"] for r in rs)} for g, rs in groups.items()}
    return out


def _kinds(rows: list[dict], path: str, mode: str) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(str(r["quotes"][path][mode]["kind"]) for r in rows))


def students(work: Path, embedder: Any) -> list[dict[str, Any]]:
    """The shipped course's student questions (eval/student_questions.txt) through the product as it runs
    (`make_pipeline`, `model = auto`): each question's quote under every span setting, and the full answer
    (quote and short answer) of the current default. The shipped course's text is in the repository."""
    import shutil

    from rag.answering import grounding
    from rag.api import index_corpus, make_pipeline
    from rag.config import Settings
    from rag.evaluation.quotes import quote_kind

    corpus = work / "shipped"
    shutil.copytree(ROOT / "corpus", corpus)
    settings = Settings(index_dir=work / "shipped-index", corpus_dir=corpus)
    index_corpus(corpus, settings)
    pipe = make_pipeline(settings)
    out = []
    for question in [q.strip() for q in STUDENT_QUESTIONS.read_text(encoding="utf-8").splitlines() if q.strip()]:
        resp = pipe.ask(question)
        plan = resp.plan
        row: dict[str, Any] = {"question": question, "abstained": plan.abstained, "quotes": {}}
        if not plan.abstained:
            texts = plan.passages
            for mode in grounding.SPAN_MODES:
                q = grounding.choose_quote(pipe.generator, plan.messages, plan.question, texts, pipe.retriever.embedder,
                                           weight=pipe.retriever_weight, exclude=pipe.boilerplate(), spans=mode)
                row["quotes"][mode] = None if q is None else {
                    "text": " ".join(q.text.split()), "kind": quote_kind(texts[q.passage - 1], q.start, q.end)}
            ans = resp.answer()
            row["product"] = {"spans": grounding.QUOTE_SPANS, "quote": ans.quote and " ".join(ans.quote.text.split()),
                              "short_answer": ans.short_answer}
        out.append(row)
        print(f"  student question {len(out)} done", file=sys.stderr, flush=True)
    return out


def report_markdown(result: dict[str, Any]) -> str:
    """The run as markdown: per path, course and setting the rates, then the paired deltas and the rule."""
    from rag.evaluation.course_run import fmt_delta, fmt_interval

    s = result["summary"]
    lines = ["# Quotes: does the grounded answer's quote hold the evidence? (eval/quotes_benchmark.py)", "",
             "Questions: the independent courses' quiz items with annotated evidence, asked by their stem. "
             "`holds` = the quote overlaps an evidence span by at least half of the shorter of the two; "
             "`holds | retrieved` = the same over the questions whose passages hold the evidence; "
             "`precise` = at least half of the quote's characters are evidence; "
             "`not_statement` = the quote is or overlaps a heading, title, label, question, fragment or code line; "
             "`chars` = the quote's length. Mean [95% bootstrap interval]; deltas are paired, setting − "
             f"`{BASELINE}` (the previous candidates). Pooled = both courses' questions together.", "",
             f"Settings: `lines` = every sentence and list item; `content` = only sentences that state something; "
             "`content-pairs` = those and two adjacent ones of a line.", ""]
    for g, n in s["n"].items():
        lines.append(f"- {g}: {n['questions']} questions, evidence in the passages for {n['retrieved']}, "
                     f"abstained on {n['abstained']}")
    lines.append("")
    for path in result["paths"]:
        lines += [f"## Path: {path}", ""]
        for g, table in s["tables"][path].items():
            lines += [f"### {g}", "", "| spans | holds | holds \\| retrieved | precise | not_statement | chars |",
                      "|---|---|---|---|---|---|"]
            for mode, cell in table.items():
                lines.append(f"| {mode} | " + " | ".join(fmt_interval(cell[m]) if m != "chars" else
                                                         f"{cell[m]['mean']:.0f}" for m in cell) + " |")
            lines.append("")
        lines += ["### Paired deltas (setting − lines)", "", "| spans | group | holds | holds \\| retrieved | "
                  "precise | not_statement | wins/ties/losses (holds) |", "|---|---|---|---|---|---|---|"]
        for g, by in s["paired"][path].items():
            for mode, cell in by.items():
                h = cell["holds"]
                lines.append(f"| {mode} | {g} | {fmt_delta(h)} | {fmt_delta(cell['holds | retrieved'])} | "
                             f"{fmt_delta(cell['precise'])} | {fmt_delta(cell['not_statement'])} | {h['wins']}/{h['ties']}/{h['losses']} |")
        lines += ["", "Rule on `holds` (pooled interval above zero, no course below): " + "; ".join(
            f"{m}: {'wins' if v['wins'] else 'does not win'}" for m, v in s["rule"][path].items()), ""]
        lines += ["Quote kinds (pooled): " + "; ".join(f"{m}: {k}" for m, k in
                                                      ((m, c["kinds"]) for m, c in s["counts"][path]["pooled"].items())),
                  ""]
    if result.get("students"):
        lines += ["## Shipped course: student questions (old `lines` and new quotes; the product's answer)", ""]
        for r in result["students"]:
            lines.append(f"- **{r['question']}**" + (" (abstained)" if r["abstained"] else ""))
            for mode, q in r["quotes"].items():
                lines.append(f"  - {mode}: " + ("none" if q is None else f"[{q['kind']}] \"{q['text']}\""))
            if r.get("product"):
                lines.append(f"  - product ({r['product']['spans']}): short answer \"{r['product']['short_answer']}\"")
        lines.append("")
    lines.append(f"Run took {result['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def main() -> None:
    from eval.courses_benchmark import add_course_arguments

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_course_arguments(ap)
    ap.add_argument("--no-model", action="store_true", help="the retriever path only")
    ap.add_argument("--students", action="store_true", help="also the shipped course's student questions")
    ap.add_argument("--limit", type=int, default=None, help="questions per course (default all)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "courses")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "course-rag" / "quotes-bench",
                    help="the model's candidate scores, for resuming (outside the repository)")
    args = ap.parse_args()

    from eval.courses_benchmark import SETTINGS, courses

    from rag.api import get_embedder
    from rag.config import Settings
    from rag.evaluation.courses import load_evidence_spans
    from rag.evaluation.quotes import CachedScorer

    started = time.time()
    paths = ("retriever",) if args.no_model else PATHS
    current = {**{k: getattr(Settings(), k) for k in SETTINGS}, "mode": Settings().mode, "query": "product"}
    embedder = get_embedder(Settings())
    rows: dict[str, list[dict[str, Any]]] = {}
    result: dict[str, Any] = {"script": "eval/quotes_benchmark.py", "settings": current, "paths": list(paths),
                              "baseline": BASELINE, "limit": args.limit}
    with tempfile.TemporaryDirectory(prefix="rag-quotes-bench-") as td:
        work = Path(td)
        for course in courses(args.shared, args.evidence, work, with_shipped=False):
            ev_file = args.evidence / f"{course.name}.evidence.jsonl"
            if not ev_file.is_file():
                print(f"{course.name}: no evidence file {ev_file}, left out", file=sys.stderr)
                continue
            evidence = load_evidence_spans(ev_file, course.lessons, [str(q["id"]) for q in course.questions])
            print(f"{course.name}: {len(evidence)} questions with evidence spans", file=sys.stderr, flush=True)
            pipe = course_pipeline(course, embedder, current, work)
            scorer = CachedScorer(pipe.generator, args.cache / f"{course.name}.scores.json")
            rows[course.name] = question_rows(course, evidence, pipe, scorer, paths, args.limit)
            result.setdefault("model", {})[course.name] = repr(pipe.generator)
        if args.students:
            result["students"] = students(work, embedder)
    result["summary"] = summarize(rows, paths)
    result["seconds"] = round(time.time() - started, 1)
    from eval.courses_benchmark import save_report

    save_report(args.out, "quotes_benchmark", result, report_markdown(result))


if __name__ == "__main__":
    main()
