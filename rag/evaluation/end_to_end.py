"""`rag eval`: the whole RAG pipeline on a question file — retrieval, multiple choice by option
log-likelihood (closed book vs RAG), free answers (exact match, token F1, abstention) — and its report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence, TypedDict

from typing_extensions import NotRequired

from rag.common.atomic import write_json_atomic, write_text_atomic
from rag.errors import RagError
from rag.evaluation.metrics import exact_match, token_f1
from rag.evaluation.retrieval import first_relevant_rank, product_search, score_ranks
from rag.retrieval.retriever import Hit, Retriever

# --------------------------------------------------------------------------- whole-pipeline evaluation (`rag eval`)

RETRIEVAL_DEPTH = 10
SECTIONS = ("retrieval", "mc", "answer")
# The multiple-choice prompts exist only for evaluation, so they live here rather than in rag/prompts.py.
MC_INSTRUCTION = "Reply with the text of the correct option."


def mc_correct(scores: Sequence[float], correct: Iterable[int]) -> bool:
    """Whether a multiple-choice question counts as right: every correct option scores strictly above every
    wrong one (the set of options above the best wrong option equals the correct set); single-answer = argmax."""
    right = set(correct)
    wrong = [s for i, s in enumerate(scores) if i not in right]
    if not wrong:
        return True
    return min(scores[i] for i in right) > max(wrong)


def mc_predicted(scores: Sequence[float], n_correct: int) -> list[int]:
    """The options the scores pick: the `n_correct` best, best first (what mc_correct compares to the key)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:n_correct]


def mc_messages(question: str, options: Sequence[str], hits: Sequence[Hit] = ()) -> list[dict]:
    """The multiple-choice conversation: numbered passages (RAG) or none (closed book), question, options."""
    from rag.answering.prompts import format_passages

    context = f"Course passages:\n\n{format_passages(hits)}\n\n" if hits else ""
    listed = "\n".join(f"- {o.strip()}" for o in options)
    return [{"role": "user", "content": f"{context}Question: {question.strip()}\n\nOptions:\n{listed}\n\n{MC_INSTRUCTION}"}]


def fit_mc_messages(generator: Any, question: str, options: Sequence[str], hits: list[Hit],
                    budget: int) -> tuple[list[Hit], list[dict]]:
    """Drop the lowest-ranked passages until prompt + longest option fit `budget` tokens (as the pipeline does)."""
    longest = max(generator.count_tokens(o) for o in options)
    used = list(hits)
    while True:
        messages = mc_messages(question, options, used)
        if not used or generator.count_tokens(messages) + longest <= budget:
            return used, messages
        used = used[:-1]


def answer_scores(prediction: str, gold: str, abstained: bool) -> dict[str, float]:
    """Exact match and token F1 of a free answer; an abstention scores 0 whatever its text."""
    if abstained:
        return {"exact_match": 0.0, "f1": 0.0}
    return {"exact_match": exact_match(prediction, gold), "f1": token_f1(prediction, gold)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_mc(generator: Any, q: dict[str, Any], hits: list[Hit], k: int, budget: int, embedder: Any,
             exclude: frozenset[str] = frozenset(), weight: float | None = None) -> dict[str, Any]:
    """One multiple-choice question scored three ways: the model closed book, the model with the passages
    (`rag_plain`), and the product's choice (`rag`: rag.answering.choices.pick_option on the same passages,
    `exclude` never counted, at `weight` < 1 mixed with the model's scores; default choices.RETRIEVER_WEIGHT).

    The product's choice is right when the set it chose is the key's set (every correct option, no wrong
    one); the model's ways are right when every correct option outscores every wrong one (`mc_correct`).

    :returns: {"correct", "closed_book", "rag_plain", "rag"}, each way with "right" and "predicted".
    """
    from rag.answering.choices import RETRIEVER_WEIGHT, Choice, asks_for_several, pick_option
    from rag.evaluation.loglik import option_scores

    weight = RETRIEVER_WEIGHT if weight is None else weight
    options, correct = q["options"], q["correct"]
    out: dict[str, Any] = {"correct": correct}
    used, rag_msgs = fit_mc_messages(generator, q["question"], options, hits[:k], budget)
    for name, messages in (("closed_book", mc_messages(q["question"], options)), ("rag_plain", rag_msgs)):
        scored = option_scores(generator, messages, options)
        norm = [s.per_byte for s in scored]
        out[name] = {"right": mc_correct(norm, correct), "predicted": mc_predicted(norm, len(correct)),
                     "options": [s.to_dict() for s in scored]}
    texts = [h.chunk.text for h in used]
    choice = Choice(q["question"], tuple(options), tuple(chr(65 + i) for i in range(len(options))),
                    multi=asks_for_several(q["question"]))
    picked = pick_option(generator, rag_msgs, choice, texts, embedder, weight, exclude)
    out["rag"] = {"right": set(picked.chosen) == set(correct), "predicted": list(picked.chosen), "weight": weight,
                  **{k: v for k, v in picked.to_dict().items() if k in ("support", "scores", "rule")}}
    out["rag"]["passages"] = out["rag_plain"]["passages"] = len(used)
    return out


def evaluate_rag(questions: list[dict[str, Any]], settings: Any, retriever: Retriever, generator: Any | None,
                 *, source: str | None = None, progress: bool = True) -> tuple[FlatRunSummary, list[dict[str, Any]]]:
    """Evaluate retrieval, multiple choice and free answers on `questions`; returns (summary, per-question rows).

    Retrieval looks RETRIEVAL_DEPTH deep whatever settings.top_k; settings.top_k passages go to the model.
    Multiple choice: options ranked by log-likelihood per UTF-8 byte (rag.loglik) as the start of the model's
    reply, closed book and with the passages; right when all correct options outrank all wrong ones
    (mc_correct). Free answers: the real pipeline (abstention included, an abstention scores 0).
    `generator` may be None only when no question has options or an answer.
    """
    from rag.api import make_pipeline
    from rag.common.progress import progress_bar
    from rag.evaluation.loglik import supports_loglik

    started = time.perf_counter()
    mode, k = settings.mode, settings.top_k
    needs_model = any("options" in q or "answer" in q for q in questions)
    if needs_model and generator is None:
        raise RagError("these questions have options or answers, which need a model: give --model")
    can_mc = generator is not None and supports_loglik(generator)
    notes: list[str] = []
    n_mc = sum(1 for q in questions if "options" in q)
    if n_mc and not can_mc:
        notes.append(f"multiple choice not scored: {generator!r} gives no portable token log-probabilities "
                     "(use a local model folder or the bundled model)")
    pipeline = make_pipeline(settings, retriever=retriever, generator=generator) if generator is not None else None
    budget = min(generator.context_window, settings.max_context_tokens) if generator is not None else 0
    boilerplate = pipeline.boilerplate() if pipeline is not None and n_mc else frozenset()

    rows: list[dict[str, Any]] = []
    for q in progress_bar(questions, total=len(questions), desc="rag eval", unit="question", enabled=progress):
        t0 = time.perf_counter()
        row: dict[str, Any] = {"id": q["id"], "question": q["question"]}
        hits = product_search(retriever, q, max(RETRIEVAL_DEPTH, k), mode)
        if q.get("evidence"):
            rank = first_relevant_rank(hits[:RETRIEVAL_DEPTH], q["evidence"])
            row["retrieval"] = {"rank": rank,
                                "top": [{"source": h.chunk.source, "section": h.chunk.section} for h in hits[:3]]}
        if "options" in q and can_mc:
            row["mc"] = score_mc(generator, q, hits, k, budget, retriever.embedder, boilerplate)
        if "answer" in q and pipeline is not None:
            answer = pipeline.ask(q["question"]).answer()
            row["answer"] = {"gold": q["answer"], "prediction": answer.text, "abstained": answer.abstained,
                             **answer_scores(answer.text, q["answer"], answer.abstained)}
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    summary: RunSummary = {**summarize(rows, n_mc=n_mc, mc_scored=can_mc),
                           "questions": source, "mode": mode, "k": k, "retrieval_depth": RETRIEVAL_DEPTH,
                           "model": generator.model_id if generator is not None else None,
                           "max_new_tokens": settings.max_new_tokens, "mc_normalisation": "logprob per UTF-8 byte",
                           "notes": notes, "seconds": round(time.perf_counter() - started, 1)}
    return with_flat_keys(summary), rows


# --------------------------------------------------------------------------- the summary (summary.json)
# TypedDicts describe the JSON and change nothing at runtime: summary.json stays byte-identical.
# Every rate below is a fraction in [0, 1]; a metric the questions cannot support is None (null in JSON).

RetrievalSummary = TypedDict("RetrievalSummary", {  # functional form: the keys hold "@"
    "n": int,  # questions with evidence quotes (the only ones retrieval is scored on)
    "recall@1": float | None, "recall@5": float | None, "recall@10": float | None,  # share with evidence in top k
    "mrr@10": float | None,  # mean of 1/rank of the first passage with evidence (0 when not in the top 10)
})


class McSummary(TypedDict):
    """Multiple choice: `n` questions with options; accuracies are None when the model gives no log-probabilities."""

    n: int
    accuracy_closed_book: float | None  # share right without passages
    accuracy_rag: float | None  # share right with the top-k passages: the grounded choice (rag.answering.choices)
    accuracy_rag_plain: float | None  # share right with the passages, options scored without the contrast


class AnswerSummary(TypedDict):
    """Free answers through the RAG pipeline: `n` questions with a gold answer; an abstention scores 0."""

    n: int
    exact_match: float | None  # mean exact match (SQuAD normalisation) over all n
    f1: float | None  # mean token F1 over all n
    f1_answered: float | None  # mean token F1 over the answered ones only
    answered: int
    n_abstained: int
    abstention_rate: float | None  # n_abstained / n


class EvalSummary(TypedDict):
    """What `summarize` returns: the question count and one block per section."""

    n: int  # questions in the file
    retrieval: RetrievalSummary
    mc: McSummary
    answer: AnswerSummary
    abstained: float | None  # the same as answer.abstention_rate


class RunSummary(EvalSummary):
    """The summary of a `rag eval` run: the metrics plus how they were made."""

    questions: str | None  # the question file
    mode: str  # retrieval mode: dense, bm25 or hybrid
    k: int  # passages given to the model
    retrieval_depth: int  # passages deep retrieval is scored (RETRIEVAL_DEPTH)
    model: str | None  # model id; None without a model
    max_new_tokens: int
    mc_normalisation: str
    notes: list[str]  # what could not be scored, and why
    seconds: float  # wall-clock time of the run, 0.1 s resolution
    unseen_course: NotRequired[dict[str, Any]]  # `--unseen-course`: the course, quiz files left out, items cut


FlatMetrics = TypedDict("FlatMetrics", {  # "section.metric" copies of the nested metrics (with_flat_keys)
    "retrieval.n": int, "retrieval.recall@1": float | None, "retrieval.recall@5": float | None,
    "retrieval.recall@10": float | None, "retrieval.mrr@10": float | None,
    "mc.n": int, "mc.accuracy_closed_book": float | None, "mc.accuracy_rag": float | None,
    "mc.accuracy_rag_plain": float | None,
    "answer.n": int, "answer.exact_match": float | None, "answer.f1": float | None,
    "answer.f1_answered": float | None, "answer.answered": int, "answer.n_abstained": int,
    "answer.abstention_rate": float | None,
})


class FlatRunSummary(RunSummary, FlatMetrics):
    """summary.json: the run summary with both the nested and the flat "section.metric" keys."""


def summarize(rows: list[dict[str, Any]], *, n_mc: int | None = None, mc_scored: bool = True) -> EvalSummary:
    """Metrics from per-question rows (see `EvalSummary` for each key and its unit).

    :param rows: the per-question rows of `evaluate_rag` (results.jsonl).
    :param n_mc: questions with options, counted even when they could not be scored (default: scored rows).
    :param mc_scored: False when the model gives no log-probabilities: the accuracies are then None.
    """
    ranks = [r["retrieval"]["rank"] for r in rows if "retrieval" in r]
    retrieval: RetrievalSummary = {"n": len(ranks), "recall@1": None, "recall@5": None, "recall@10": None, "mrr@10": None}
    if ranks:
        retrieval.update(score_ranks(ranks, (1, 5, 10)).to_dict())  # type: ignore[typeddict-item]

    mc_rows = [r["mc"] for r in rows if "mc" in r]
    mc: McSummary = {"n": n_mc if n_mc is not None else len(mc_rows),
          "accuracy_closed_book": _mean([float(m["closed_book"]["right"]) for m in mc_rows]) if mc_scored else None,
          "accuracy_rag": _mean([float(m["rag"]["right"]) for m in mc_rows]) if mc_scored else None,
          "accuracy_rag_plain": _mean([float(m["rag_plain"]["right"]) for m in mc_rows if "rag_plain" in m])
          if mc_scored else None}

    answers = [r["answer"] for r in rows if "answer" in r]
    answered = [a for a in answers if not a["abstained"]]
    n_abstained = len(answers) - len(answered)
    answer: AnswerSummary = {"n": len(answers), "exact_match": _mean([a["exact_match"] for a in answers]),
              "f1": _mean([a["f1"] for a in answers]), "f1_answered": _mean([a["f1"] for a in answered]),
              "answered": len(answered), "n_abstained": n_abstained,
              "abstention_rate": n_abstained / len(answers) if answers else None}
    return {"n": len(rows), "retrieval": retrieval, "mc": mc, "answer": answer, "abstained": answer["abstention_rate"]}


def with_flat_keys(summary: RunSummary) -> FlatRunSummary:
    """Add "section.metric" top-level copies of the nested section metrics, so both readings work."""
    flat: dict[str, Any] = dict(summary)
    for section in SECTIONS:
        for key, value in summary.get(section, {}).items():
            flat[f"{section}.{key}"] = value
    return flat  # type: ignore[return-value]  # the keys of FlatMetrics, built from SECTIONS


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (what `rag eval` prints and writes to summary.md)."""
    r, m, a = summary["retrieval"], summary["mc"], summary["answer"]
    lines = [f"# rag eval{': ' + summary['questions'] if summary.get('questions') else ''}", "",
             f"{summary['n']} questions, mode {summary['mode']}, k {summary['k']}, model {summary['model'] or 'none'}, "
             f"{summary['seconds']:.0f} s", "",
             f"## Retrieval (n {r['n']}: questions with evidence quotes, {summary['retrieval_depth']} passages deep)", "",
             "| recall@1 | recall@5 | recall@10 | MRR@10 |", "|---|---|---|---|",
             f"| {_fmt(r['recall@1'])} | {_fmt(r['recall@5'])} | {_fmt(r['recall@10'])} | {_fmt(r['mrr@10'])} |", "",
             f"## Multiple choice (n {m['n']}: options ranked by log-likelihood per byte; right = every correct "
             "option above every wrong one)", "",
             f"| closed book | RAG (top {summary['k']} passages, grounded choice) | RAG, the model's scores |", "|---|---|---|",
             f"| {_fmt(m['accuracy_closed_book'])} | {_fmt(m['accuracy_rag'])} | {_fmt(m.get('accuracy_rag_plain'))} |",
             "",
             f"## Free answers (n {a['n']}: the RAG pipeline; an abstention scores 0)", "",
             "| exact match | F1 | F1 answered only | abstained |", "|---|---|---|---|",
             f"| {_fmt(a['exact_match'])} | {_fmt(a['f1'])} | {_fmt(a['f1_answered'])} | "
             f"{_fmt(a['abstention_rate'])} ({a['n_abstained']}/{a['n']}) |"]
    lines += [f"\nNote: {note}" for note in summary.get("notes", [])]
    return "\n".join(lines) + "\n"


def index_unseen_course(course: Path, questions: list[dict[str, Any]], work: Path,
                        settings: Any) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Index `course` as a student meets it before the quiz: without its quiz files and without each asked
    question's own item (rag.evaluation.sets.make_quiz_set, the protocol of docs/results/retrieval.md).

    :param course: the course folder (read only).
    :param questions: the question rows; only those with "evidence" quotes are kept (the set scores them).
    :param work: an empty scratch folder; the copied course goes to work/course, its index to work/index.
    :param settings: the run's settings; the returned copy points at the new index.
    :returns: (settings for the new index, the questions kept, the set's notes: files left out, items cut).
    :raises RagError: no question with evidence, an unreadable course, or an index that cannot be built.
    """
    from rag.api import index_corpus
    from rag.evaluation.sets import make_quiz_set

    es = make_quiz_set(Path(course), questions, work / "course")
    unseen = settings.model_copy(update={"index_dir": work / "index", "corpus_dir": es.corpus})
    index_corpus(es.corpus, unseen)
    return unseen, es.questions, {"course": str(course), **es.notes}


def prepare_report_dir(report_dir: Path) -> None:
    """Create the report folder up front, so a bad --report fails before a long run rather than after it."""
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RagError(f"cannot create the report folder {report_dir}: {exc.strerror or exc}: choose another --report folder") from None
    if not os.access(report_dir, os.W_OK):
        raise RagError(f"cannot write to the report folder {report_dir}: choose another --report folder")


def write_report(report_dir: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write results.jsonl, summary.json and summary.md into `report_dir`, each atomically."""
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(report_dir / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_json_atomic(report_dir / "summary.json", summary)
        write_text_atomic(report_dir / "summary.md", format_summary(summary))
    except OSError as exc:
        raise RagError(f"cannot write the report to {report_dir}: {exc.strerror or exc}: choose another --report folder") from None
