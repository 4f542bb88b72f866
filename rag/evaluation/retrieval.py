"""Evaluation over a JSONL question file: retrieval (recall@k, MRR@10 on verbatim evidence quotes), and for
`rag eval` the whole RAG pipeline: multiple choice by option log-likelihood (closed book vs RAG) and free
answers (exact match, token F1, abstention).

Question lines: {"id", "question", "options"?: [str], "correct"?: [int], "answer"?: str, "evidence"?: [str]}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rapidfuzz import fuzz

from rag.common.text import normalize_ws, read_text
from rag.errors import RagError
from rag.retrieval.retriever import Hit, Retriever

FUZZY_THRESHOLD = 90.0


def load_questions(path: Path) -> list[dict[str, Any]]:
    """Read and check a question file (one JSON object a line, needs "question"); errors name the line."""
    rows = []
    # read_text: missing, folder, symlink loop, bad encoding -> one RagError line; UTF-16/32 by BOM.
    # split("\n"), not splitlines(): a JSON string may hold a raw U+2028, which splitlines() breaks on.
    for n, line in enumerate(read_text(path, "question file").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RagError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
            raise RagError(f"{path}:{n}: each line needs a non-empty \"question\" string")
        if "evidence" in row and not (isinstance(row["evidence"], list) and all(isinstance(e, str) for e in row["evidence"])):
            raise RagError(f"{path}:{n}: \"evidence\" must be a list of quote strings")
        problem = _field_problem(row)
        if problem:
            raise RagError(f"{path}:{n}: {problem}")
        row.setdefault("id", f"line{n}")
        rows.append(row)
    if not rows:
        raise RagError(f"question file {path} has no questions")
    return rows


def _field_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with a line's id/options/correct/answer fields, or None."""
    if "id" in row and (isinstance(row["id"], bool) or not isinstance(row["id"], (str, int))):
        return "\"id\" must be a string or a number"
    if "answer" in row and not (isinstance(row["answer"], str) and row["answer"].strip()):
        return "\"answer\" must be a non-empty string"
    if "options" not in row and "correct" not in row:
        return None
    options, correct = row.get("options"), row.get("correct")
    if not (isinstance(options, list) and len(options) >= 2
            and all(isinstance(o, str) and o.strip() for o in options)):
        return "\"options\" must be a list of at least two non-empty strings (with \"correct\")"
    if not (isinstance(correct, list) and correct
            and all(isinstance(c, int) and not isinstance(c, bool) for c in correct)):
        return "\"correct\" must be a non-empty list of option indices (0 = first option)"
    bad = [c for c in correct if not 0 <= c < len(options)]
    if bad:
        return f"\"correct\" index {bad[0]} is out of range: there are {len(options)} options (indices 0-{len(options) - 1})"
    if len(set(correct)) != len(correct):
        return "\"correct\" lists an option twice"
    return None


def contains_evidence(text: str, quotes: Iterable[str], threshold: float = FUZZY_THRESHOLD) -> bool:
    """True when `text` holds one of the quotes (whitespace-normalised, case-folded, fuzzy >= threshold)."""
    hay = normalize_ws(text).lower()
    for q in quotes:
        needle = normalize_ws(q).lower()
        if needle and (needle in hay or fuzz.partial_ratio(needle, hay) >= threshold):
            return True
    return False


def product_search(retriever: Retriever, question: dict[str, Any], k: int, mode: str | None = None) -> list[Hit]:
    """Search a question row as the product searches it: a row with "options" as a pasted quiz item (its stem
    and its stem with the options, fused: `rag.answering.choices.search_wordings`), else its question.

    :param retriever: the product's retriever.
    :param question: a question row ("question", optional "options").
    :param k: passages to return.
    :param mode: retrieval mode (default: the retriever's).
    :returns: the hits, best first.
    """
    from rag.answering.choices import search_wordings

    if question.get("options"):
        return retriever.search_many(search_wordings(question["question"], question["options"]), k, mode)
    return retriever.search(question["question"], k=k, mode=mode)


def first_relevant_rank(hits: list[Hit], quotes: list[str]) -> int | None:
    """Rank of the first hit holding an evidence quote, None when no hit does."""
    for h in hits:
        if contains_evidence(h.chunk.text, quotes):
            return h.rank
    return None


@dataclass
class RetrievalScores:
    """recall@k (a relevant passage among the first k) and MRR@10 over the questions with evidence."""

    n: int
    recall: dict[int, float]
    mrr10: float

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, **{f"recall@{k}": v for k, v in self.recall.items()}, "mrr@10": self.mrr10}


def score_ranks(ranks: list[int | None], ks: tuple[int, ...] = (1, 5, 10)) -> RetrievalScores:
    """recall@k and MRR@10 from the first-relevant ranks of each question (None = not found)."""
    n = len(ranks)
    if n == 0:
        return RetrievalScores(0, {k: float("nan") for k in ks}, float("nan"))
    recall = {k: sum(1 for r in ranks if r is not None and r <= k) / n for k in ks}
    mrr = sum(1.0 / r for r in ranks if r is not None and r <= 10) / n
    return RetrievalScores(n, recall, mrr)


def evaluate_retrieval(retriever: Retriever, questions: list[dict[str, Any]], mode: str,
                       depth: int = 10) -> tuple[RetrievalScores, list[dict[str, Any]]]:
    """Scores for one retrieval mode, plus the per-question rank of the first passage with evidence."""
    ranks, rows = [], []
    for q in questions:
        if not q.get("evidence"):
            continue
        hits = product_search(retriever, q, depth, mode)
        rank = first_relevant_rank(hits, q["evidence"])
        ranks.append(rank)
        rows.append({"id": q["id"], "mode": mode, "rank": rank,
                     "top": [{"source": h.chunk.source, "section": h.chunk.section} for h in hits[:3]]})
    if not ranks:
        raise RagError("no question in the file has \"evidence\" quotes, so retrieval cannot be scored")
    return score_ranks(ranks), rows
