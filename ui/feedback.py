"""Readers' thumbs up/down on answers, as `rag eval` question lines: a teacher turns feedback into a set.

Each rating becomes one line of the question file format that rag.evaluation.retrieval.load_questions
reads ({"id", "question", "answer"?, "evidence"?}), with the feedback kept in extra keys `rag eval` ignores:

- thumbs up: the reader vouched for the answer, so it becomes the expected "answer" (its [n] markers
  removed), and the words of the passages that supported it (the verified quote, the cited snippets) become
  the "evidence" that retrieval is scored on.
- thumbs down: the answer is wrong, so it is kept only as "model_answer" for the teacher to read; the
  expected answer the reader typed, if any, is the "answer"; no evidence (the passages found may be the
  problem). A line without an expected answer still loads: `rag eval` scores its retrieval only if the
  teacher adds evidence, and the teacher can add the answer.
- an abstention ("the course does not seem to cover this") is never an expected answer (`rag eval` scores
  an abstaining prediction 0 whatever the gold): it is kept as "model_answer" with "abstained": true, so
  a thumbs up marks a question the course rightly does not answer.

Extra keys: "feedback" ("up"/"down"), "note" (the reader's note, when given), "model_answer", "abstained",
"source" ("feedback:<message id>").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Literal

from ui.history import FeedbackRecord

_MARKERS = re.compile(r"\s?\[\s*\d+\s*(?:[,;]\s*\d+\s*)*\]")

Ratings = Literal["all", "up", "down"]


def eval_row(fb: FeedbackRecord) -> dict[str, Any]:
    """One `rag eval` question line (as a dict) for one rating (see the module docstring)."""
    given = _MARKERS.sub("", fb.answer).strip()
    row: dict[str, Any] = {"id": f"feedback-{fb.message_id[:12]}", "question": fb.question.strip(),
                           "feedback": "up" if fb.rating > 0 else "down"}
    if fb.rating > 0 and not fb.abstained:
        if given:
            row["answer"] = given
        evidence = [e for e in dict.fromkeys(" ".join(e.split()) for e in fb.evidence) if e]
        if evidence:
            row["evidence"] = evidence
    else:
        if fb.expected.strip():
            row["answer"] = fb.expected.strip()
        if given:
            row["model_answer"] = given
    if fb.abstained:
        row["abstained"] = True
    if fb.note.strip():
        row["note"] = fb.note.strip()
    row["source"] = f"feedback:{fb.message_id}"
    return row


def eval_jsonl(feedback: Iterable[FeedbackRecord], rating: Ratings = "all") -> str:
    """The ratings as a `rag eval` question file: one JSON object a line (UTF-8 text, '' when none).

    :param feedback: the ratings (ui.history.ChatStore.feedback).
    :param rating: "all", or only "up" / only "down".
    :returns: the file's text, each line ending in a newline.
    """
    keep = {"all": (1, -1), "up": (1,), "down": (-1,)}[rating]
    rows = [eval_row(fb) for fb in feedback if fb.rating in keep and fb.question.strip()]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
