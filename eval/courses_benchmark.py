"""The independent evaluation: every course of ../shared/eval-courses (and the shipped course, as one more
course that never decides), the LangChain baseline, the previous default and each candidate retrieval
setting, scored in one run, per course and pooled, with 95% bootstrap intervals and paired deltas.

The decision rule (README, "How a default is chosen"): a candidate replaces the default when, on the pooled
independent courses, its paired interval against the default excludes zero on the positive side, and on
no single course does its paired interval lie wholly below zero (`rag.evaluation.courses.rule_verdict`).

Run (from the project folder; ~10 min retrieval-only on 2 cores, multiple choice adds ~1-2 s a question):
    . .venv/bin/activate
    python -m eval.courses_benchmark                      # retrieval: baseline, default, candidates
    python -m eval.courses_benchmark --choices            # + multiple choice of the default and the previous one
Per-(course, pipeline) passages and choices are kept in --cache (outside the repository: they hold course
text), so an interrupted run resumes where it stopped (delete the folder to start over). Writes --out/courses_benchmark.md and .json.
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

SHIPPED = "shipped (decides nothing)"
# The default before this evaluation existed, spelled out so that the comparison survives a change of default.
# "query": how a quiz item is searched: "stem", "options" (stem and options as one query) or "product"
# (what the product does today: rag.evaluation.retrieval.product_search).
PREVIOUS = {"chunk_tokens": 256, "chunk_overlap": 32, "merge_sections": True, "embed_headings": False,
            "child_tokens": 128, "dense_weight": 0.8, "collapse_duplicates": True, "mode": "hybrid", "query": "stem"}
SETTINGS = [k for k in PREVIOUS if k not in ("mode", "query")]
CANDIDATES = {
    "no child windows": {"child_tokens": 0},
    "no child windows, even RRF": {"child_tokens": 0, "dense_weight": 0.5},
    "no child windows, dense 0.65": {"child_tokens": 0, "dense_weight": 0.65},
    "no child windows, headings embedded": {"child_tokens": 0, "embed_headings": True},
    "no child windows, no merging": {"child_tokens": 0, "merge_sections": False},
    "no child windows, 128-token chunks": {"child_tokens": 0, "chunk_tokens": 128},
    "no child windows, dense": {"child_tokens": 0, "mode": "dense"},
    "no child windows, stem + options searched": {"child_tokens": 0, "query": "options"},
    "stem + options searched": {"query": "options"},
    "even RRF": {"dense_weight": 0.5},
    "dense 0.65": {"dense_weight": 0.65},
    "rrf_k 20": {"rrf_k": 20},
    "stem ∪ stem + options (RRF of the two searches)": {"query": "product"},
    "even RRF, stem ∪ stem + options": {"dense_weight": 0.5, "query": "product"},
    "headings embedded": {"embed_headings": True},
}
DECIDING = ("recall@5", "mrr@10")


def courses(shared: Path, evidence_dir: Path, work: Path, with_shipped: bool) -> list[Any]:
    """The independent courses (with their evidence annotations where present) and the shipped course."""
    from rag.evaluation.courses import Course, load_course
    from rag.evaluation.retrieval import load_questions
    from rag.evaluation.sets import make_quiz_set

    out = []
    for folder in sorted(p for p in shared.iterdir() if (p / "quiz.jsonl").is_file()):
        ev = evidence_dir / f"{folder.name}.evidence.jsonl"
        out.append(load_course(folder, evidence=ev if ev.is_file() else None))
    if with_shipped:
        qs = load_questions(ROOT / "eval" / "dev_questions.jsonl")
        es = make_quiz_set(ROOT / "corpus", qs, work / "shipped")
        out.append(Course(SHIPPED, es.corpus, [q for q in es.questions if q.get("options")],
                          {"evidence_from": "quiz quotes", **es.notes}))
    return out


def cached(path: Path, key: dict[str, Any], make: Any) -> Any:
    """The value stored at `path` for `key`, or make() stored there (atomically) for the next run."""
    from rag.common.atomic import write_json_atomic

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    target = path.with_name(f"{path.name}-{digest}.json")
    if target.is_file():
        return json.loads(target.read_text(encoding="utf-8"))["value"]
    value = make()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, {"key": key, "value": value})
    return value


def query_text(question: dict[str, Any], how: str) -> str:
    """What is searched for a quiz question: its stem ("stem"), or the stem and its options ("options")."""
    if how == "options":
        return question["question"] + "\n" + "\n".join(question.get("options", []))
    return question["question"]


def ranked(hits: list[list[str]]) -> list[Any]:
    """Cached hits ([source, text] pairs) as objects `courses.question_ranks` can read."""
    from types import SimpleNamespace

    return [SimpleNamespace(chunk=SimpleNamespace(source=s, text=t)) for s, t in hits]


_BUILT: dict[str, Any] = {}  # (course, settings) -> the product's retriever, built once a run


def product_retriever(course: Any, embedder: Any, settings: dict[str, Any], work: Path) -> Any:
    """The product's retriever over `course` with `settings` (their index settings), built once a run."""
    from rag.evaluation.compare import build_product

    key = json.dumps([course.name, {k: v for k, v in settings.items() if k in SETTINGS}], sort_keys=True)
    if key not in _BUILT:
        overrides = {k: v for k, v in settings.items() if k in SETTINGS}
        _BUILT[key] = build_product(course.lessons, embedder, overrides, work)[0]
    return _BUILT[key]


def product_searcher(retriever: Any, settings: dict[str, Any], k: int) -> Any:
    """question row -> the top k, searched as `settings["query"]` says ("product": as the product does)."""
    from rag.evaluation.retrieval import product_search

    mode, how = settings.get("mode", "hybrid"), settings.get("query", "stem")
    if how == "product":
        return lambda q: product_search(retriever, q, k, mode)
    return lambda q: retriever.search(query_text(q, how), k=k, mode=mode)


def versions() -> dict[str, int]:
    """The loader and chunker versions: the text a pipeline reads changes with them, so every key holds them."""
    from rag.ingest.chunking import CHUNKER_VERSION
    from rag.ingest.loaders import LOADER_VERSION

    return {"loader": LOADER_VERSION, "chunker": CHUNKER_VERSION}


def retrieval_rows(course: Any, embedder: Any, pipelines: dict[str, dict[str, Any]], cache: Path, work: Path,
                   ) -> dict[str, list[dict[str, Any]]]:
    """{pipeline: per-question rows} for the LangChain baselines and each product setting.

    The top-10 passages of every question are cached (outside the repository: they hold course text), so
    a changed evidence file or metric re-scores without rebuilding an index.
    """
    from rag.evaluation.compare import LangChainBaseline
    from rag.evaluation.courses import question_ranks
    from rag.retrieval.fusion import rrf as fuse

    stamp = {"course": course.name, "questions": [[q["id"], q["question"]] for q in course.questions], **versions()}

    def hits_of(search: Any) -> dict[str, list]:
        """{question id: [[source, text], ...]} of the top 10 for each question row."""
        return {str(q["id"]): [[h.chunk.source, h.chunk.text] for h in search(q)[:10]] for q in course.questions}

    def langchain() -> dict[str, dict]:
        lc = LangChainBaseline(course.lessons, embedder)
        dense, bm25 = lc.searcher("dense"), lc.searcher("bm25")

        def rrf(q: str) -> list:
            runs = [dense.search(q, 50), bm25.search(q, 50)]
            by_id = {h.chunk.id: h for r in runs for h in r}
            return [by_id[i] for i, _ in fuse([[h.chunk.id for h in r] for r in runs], 60)[:10]]

        return {"LangChain 1000/200 dense": hits_of(lambda q: dense.search(q["question"], 10)),
                "LangChain 1000/200 dense, stem + options": hits_of(lambda q: dense.search(query_text(q, "options"), 10)),
                "LangChain 1000/200 bm25": hits_of(lambda q: bm25.search(q["question"], 10)),
                "LangChain 1000/200 RRF": hits_of(lambda q: rrf(q["question"]))}

    folder = cache / course.name.split(" ")[0]
    top = dict(cached(folder / "langchain", {**stamp, "v": 3}, langchain))
    for name, settings in pipelines.items():
        def product(settings: dict[str, Any] = settings) -> dict:
            return hits_of(product_searcher(product_retriever(course, embedder, settings, work), settings, 10))

        top[name] = cached(folder / "product", {**stamp, "settings": settings, "v": 2}, product)
        print(f"  {course.name}: {name} done", file=sys.stderr, flush=True)
    return {name: [{"id": q["id"], "course": course.name,
                    "ranks": question_ranks(ranked(by_q[str(q["id"])]), q)} for q in course.questions]
            for name, by_q in top.items()}


def default_pipeline() -> dict[str, Any]:
    """The product's current settings as a pipeline of this benchmark (searched as the product searches)."""
    from rag.config import Settings

    return {**{k: getattr(Settings(), k) for k in SETTINGS}, "mode": Settings().mode, "query": "product"}


def cached_choice_rows(course: Any, embedder: Any, settings: dict[str, Any], cache: Path, work: Path) -> list:
    """`course_run.score_choices` rows of `course` under `settings` (the model's ways and the product's
    choice), cached: the model's log-likelihoods are the slow part."""
    from rag.api import get_generator
    from rag.config import Settings
    from rag.evaluation.course_run import score_choices

    def make() -> list:
        retriever = product_retriever(course, embedder, settings, work)
        run = Settings(index_dir=retriever.index_dir, corpus_dir=course.lessons,
                       **{k: v for k, v in settings.items() if k in SETTINGS}, mode=settings.get("mode", "hybrid"))
        return score_choices(course, retriever, run, get_generator(run),
                             search=product_searcher(retriever, settings, run.top_k))

    key = {"course": course.name, "questions": [q["id"] for q in course.questions], "settings": settings,
           **versions(), "v": 1}
    return cached(cache / course.name.split(" ")[0] / "choices", key, make)


def choice_rows(course: Any, embedder: Any, pipelines: dict[str, dict[str, Any]], cache: Path, work: Path,
                names: tuple[str, ...] = ("previous default", "default")) -> dict[str, dict[str, Any]]:
    """{pipeline: choice_block} for the named pipelines, with the model `model = auto` picks for the course."""
    from rag.evaluation.course_run import choice_block

    out = {}
    for name in dict.fromkeys(names):
        out[name] = choice_block(cached_choice_rows(course, embedder, pipelines[name], cache, work))
        print(f"  {course.name}: choices of {name} done", file=sys.stderr, flush=True)
    return out


def summarize(rows: dict[str, dict[str, list]], pipelines: dict[str, dict[str, Any]], started: float,
              ) -> dict[str, Any]:
    """Per-course and pooled tables at both grains, and the comparisons the rule reads."""
    from rag.evaluation.courses import GRAINS, METRICS, grain_ranks, rank_summary

    names = [n for n in next(iter(rows.values()))]
    tables: dict[str, dict[str, dict]] = {g: {} for g in GRAINS}
    comparisons: dict[str, dict[str, Any]] = {g: {} for g in GRAINS}
    for grain in GRAINS:
        for course, by in rows.items():
            if grain_ranks(by[names[0]], grain)[0]:
                tables[grain][course] = {n: rank_summary(grain_ranks(by[n], grain)[1]) for n in names}
        tables[grain]["pooled (independent courses)"] = {n: pooled_summary(rows, n, grain) for n in names}
        comparisons[grain]["default − LangChain 1000/200 dense"] = compare(rows, "default", "LangChain 1000/200 dense", grain)
        comparisons[grain]["default − LangChain 1000/200 dense, stem + options"] = compare(
            rows, "default", "LangChain 1000/200 dense, stem + options", grain)
        comparisons[grain]["previous default − LangChain 1000/200 dense"] = compare(
            rows, "previous default", "LangChain 1000/200 dense", grain)
        for n in pipelines:
            if n not in ("previous default",):
                comparisons[grain][f"{n} − previous default"] = compare(rows, n, "previous default", grain)
    decisions = {label: adopt_verdict(comparisons["evidence"][label], comparisons["lesson"][label])
                 for label in comparisons["evidence"] if label.endswith("− previous default")}
    return {"script": "eval/courses_benchmark.py", "metrics": list(METRICS), "deciding": list(DECIDING),
            "pipelines": pipelines, "tables": tables, "comparisons": comparisons, "decisions": decisions,
            "seconds": round(time.time() - started, 1)}


def compare(rows: dict[str, dict[str, list]], name: str, against: str, grain: str) -> dict[str, Any]:
    """`name` minus `against` at `grain`: per course and pooled over the independent courses, with the rule."""
    from rag.evaluation.courses import grain_ranks, paired, rule_verdict

    per_course, pooled_a, pooled_b = {}, [], []
    for course, by_pipe in rows.items():
        if name not in by_pipe or against not in by_pipe:
            continue
        ids, a = grain_ranks(by_pipe[name], grain)
        _, b = grain_ranks(by_pipe[against], grain)
        if not ids:
            continue
        per_course[course] = paired(a, b, DECIDING)
        if course != SHIPPED:
            pooled_a += a
            pooled_b += b
    pooled = paired(pooled_a, pooled_b, DECIDING) if pooled_a else {}
    independent = {c: r for c, r in per_course.items() if c != SHIPPED}
    verdict = {m: rule_verdict({c: r[m] for c, r in independent.items()}, pooled[m]) for m in pooled}
    return {"per_course": per_course, "pooled": pooled, "rule": verdict}


def pooled_summary(rows: dict[str, dict[str, list]], name: str, grain: str) -> dict[str, Any]:
    """Metrics with intervals of one pipeline over the independent courses' questions together."""
    from rag.evaluation.courses import grain_ranks, rank_summary

    ranks = [r for c, by in rows.items() if c != SHIPPED and name in by for r in grain_ranks(by[name], grain)[1]]
    return rank_summary(ranks)


def adopt_verdict(evidence: dict[str, Any], lesson: dict[str, Any]) -> dict[str, Any]:
    """The README's rule for one candidate against the current default: MRR@10 at the evidence grain wins
    pooled (interval above zero), and nothing loses beyond its interval: recall@5 pooled, and either metric
    on any independent course at either grain.

    :param evidence: `compare` result at the evidence grain.
    :param lesson: `compare` result at the lesson grain.
    :returns: {"adopt": bool, "why": str}.
    """
    if not evidence.get("pooled"):
        return {"adopt": False, "why": "no evidence-grain comparison"}
    if not evidence["rule"]["mrr@10"]["pooled_above_zero"]:
        return {"adopt": False, "why": "MRR@10 pooled interval does not exclude zero"}
    ci = evidence["pooled"]["recall@5"]["ci"]
    if ci and ci[1] < 0:
        return {"adopt": False, "why": "recall@5 pooled loses"}
    for grain, cmp_ in (("evidence", evidence), ("lesson", lesson)):
        for course, r in cmp_.get("per_course", {}).items():
            if course != SHIPPED and any(r[m]["ci"] and r[m]["ci"][1] < 0 for m in DECIDING):
                return {"adopt": False, "why": f"loses on {course} ({grain} grain)"}
    return {"adopt": True, "why": "wins MRR@10 pooled, loses nowhere"}


def report_markdown(result: dict[str, Any]) -> str:
    """The whole run as markdown: per course and pooled tables, then the comparisons and the rule."""
    from rag.evaluation.course_run import fmt_interval, fmt_delta

    lines = ["# Independent evaluation (eval/courses_benchmark.py)", "",
             "Hit grains: *lesson* = a passage from the question's lesson file; *evidence* = a passage holding "
             "an annotated evidence span (eval/courses/*.evidence.jsonl) or quote. Figures: mean [95% bootstrap "
             "interval]; deltas are paired over the same questions. Pooled = the independent courses' questions "
             f"together ({SHIPPED.split(' ')[0]} course excluded).", ""]
    metrics = result["metrics"]
    for grain in ("evidence", "lesson"):
        lines += [f"## Retrieval, {grain} hits", ""]
        for course, table in result["tables"][grain].items():
            lines += [f"### {course}", "", "| pipeline | n | " + " | ".join(metrics) + " |",
                      "|---|---|" + "---|" * len(metrics) + ""]
            for name, s in table.items():
                lines.append(f"| {name} | {s['n']} | " + " | ".join(fmt_interval(s[m]) for m in metrics) + " |")
            lines.append("")
        lines += [f"### Paired deltas ({grain})", "",
                  "| comparison | course | " + " | ".join(DECIDING) + " | rule |", "|---|---|" + "---|" * (len(DECIDING) + 1)]
        for label, cmp_ in result["comparisons"][grain].items():
            for course, r in [*cmp_["per_course"].items(), ("pooled", cmp_["pooled"])]:
                rule = ""
                if course == "pooled" and cmp_["rule"]:
                    rule = ", ".join(f"{m}: {'wins' if v['wins'] else 'no'}" for m, v in cmp_["rule"].items())
                lines.append(f"| {label} | {course} | " + " | ".join(fmt_delta(r[m]) for m in DECIDING) + f" | {rule} |")
        lines.append("")
    for course, block in result.get("choices", {}).items():
        lines += [f"## Multiple choice: {course}", "", "| pipeline | n | closed book | model with passages | "
                  "product's choice | choice − closed book |", "|---|---|---|---|---|---|"]
        for name, ch in block.items():
            acc = ch["accuracy"]
            lines.append(f"| {name} | {ch['n']} | {fmt_interval(acc['closed_book'])} | {fmt_interval(acc['rag_plain'])} | "
                         f"{fmt_interval(acc['rag'])} | {fmt_delta(ch['vs_closed_book']['rag'])} |")
        lines.append("")
    lines += ["## Decisions (each candidate against the previous default, README rule)", "",
              "| candidate | adopt | why |", "|---|---|---|",
              *[f"| {label.replace(' − previous default', '')} | {'yes' if d['adopt'] else 'no'} | {d['why']} |"
                for label, d in result.get("decisions", {}).items()], ""]
    lines.append(f"Run took {result['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def save_report(out: Path, stem: str, result: dict[str, Any], markdown: str) -> None:
    """Write `result` to OUT/STEM.json and its tables to OUT/STEM.md (atomically), and print the tables."""
    from rag.common.atomic import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{stem}.json", result)
    write_text_atomic(out / f"{stem}.md", markdown)
    print(markdown)


def add_course_arguments(ap: argparse.ArgumentParser) -> None:
    """--shared (the independent courses) and --evidence (their annotations): every course benchmark's inputs."""
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "eval-courses",
                    help="folder of course folders (default ../shared/eval-courses)")
    ap.add_argument("--evidence", type=Path, default=ROOT / "eval" / "courses", help="evidence annotations")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_course_arguments(ap)
    ap.add_argument("--no-shipped", action="store_true", help="leave out the shipped course")
    ap.add_argument("--candidates", default=";".join(CANDIDATES), help="candidate names separated by ;")
    ap.add_argument("--choices", action="store_true", help="also score multiple choice (the bundled model)")
    ap.add_argument("--choices-of", default="default",
                    help="pipelines whose multiple choice is scored, separated by ; (default: the default)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "courses")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "course-rag" / "courses-bench",
                    help="per-(course, pipeline) passages and choices, for resuming (outside the repository)")
    args = ap.parse_args()

    from rag.api import get_embedder
    from rag.config import Settings

    started = time.time()
    current = default_pipeline()
    pipelines = {"previous default": PREVIOUS, "default": current,
                 **{n: {**PREVIOUS, **CANDIDATES[n]} for n in args.candidates.split(";") if n}}
    embedder = get_embedder(Settings())
    rows: dict[str, dict[str, list]] = {}
    choices: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rag-courses-bench-") as td:
        work = Path(td)
        for course in courses(args.shared, args.evidence, work, not args.no_shipped):
            print(f"{course.name}: {len(course.questions)} questions, {course.notes.get('with_evidence')} with evidence",
                  file=sys.stderr, flush=True)
            rows[course.name] = retrieval_rows(course, embedder, pipelines, args.cache, work)
            if args.choices:
                choices[course.name] = choice_rows(course, embedder, pipelines, args.cache, work,
                                                   tuple(args.choices_of.split(";")))
    result = summarize(rows, pipelines, started)
    if choices:
        result["choices"] = choices
    save_report(args.out, "courses_benchmark", result, report_markdown(result))


if __name__ == "__main__":
    main()
