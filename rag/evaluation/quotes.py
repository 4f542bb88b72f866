"""Scoring a grounded answer's quote against annotated evidence: does the quote hold the evidence, and is
it a statement at all (not a heading, a title, a list label, a question or a fragment)?

"Holds the evidence" is decided on character spans of the lesson file, never on wording alone: the quote
is located in its passage's lesson file (`locate`), and it holds the evidence when its span and an
annotated evidence span of the same file overlap by at least `MIN_SHARE` of the shorter of the two
(`holds_evidence`): a one-sentence quote inside a two-sentence evidence span holds it, and so does a
two-sentence quote around a one-sentence span; a quote that only touches a span's first words does not.
A quote that cannot be located in the file (its text changed by the loader, e.g. an image's alt text) is
judged by its words instead: it holds the evidence when, whitespace-normalised and case-folded, one holds
the other (rag.evaluation.retrieval.contains_evidence), and is counted as unlocated.

The quote's kind is read off the passage's own units (`rag.answering.sentences.passage_units`): a quote
is "sentence" when every unit it overlaps is one, else the first other kind among them.

`CachedScorer` keeps the model's scores of candidate quotes on disk, so an evaluation that compares
several candidate sets scores each distinct candidate once and resumes after an interruption.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.answering.sentences import QUOTABLE, passage_units
from rag.evaluation.courses import EvidenceSpan
from rag.evaluation.retrieval import contains_evidence

MIN_SHARE = 0.5  # overlap needed, as a share of the shorter of quote and evidence span


def locate(quote: str, lesson_text: str, near: int = 0) -> tuple[int, int] | None:
    """The span of `quote` in `lesson_text` (whitespace-tolerant), the occurrence nearest `near`.

    :param quote: the quote's text.
    :param lesson_text: the lesson file's text (universal newlines, as annotations index it).
    :param near: where the quote is expected (the passage's start in the file plus the quote's offset in
        the passage); decides between repeated occurrences.
    :returns: [start, end) character offsets, or None when the quote's words are not in the file in order.
    """
    words = quote.split()
    if not words:
        return None
    found = [(m.start(), m.end()) for m in re.finditer(r"\s+".join(re.escape(w) for w in words), lesson_text)]
    return min(found, key=lambda s: abs(s[0] - near)) if found else None


def overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Characters two [start, end) spans share."""
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def holds_evidence(span: tuple[int, int], file: str, evidence: Sequence[EvidenceSpan],
                   min_share: float = MIN_SHARE) -> bool:
    """Whether the quote at `span` of lesson `file` overlaps an evidence span of that file by at least
    `min_share` of the shorter of the two.

    :param span: the quote's [start, end) in the lesson file (`locate`).
    :param file: the lesson file (relative to the lesson folder, as the annotations name it).
    :param evidence: the question's annotated spans.
    :param min_share: 0..1.
    """
    return any(e.file == file and overlap(span, (e.start, e.end)) >= min_share * min(span[1] - span[0], e.end - e.start)
               and overlap(span, (e.start, e.end)) > 0 for e in evidence)


def evidence_share(span: tuple[int, int], file: str, evidence: Sequence[EvidenceSpan]) -> float:
    """The share (0..1) of the quote at `span` of lesson `file` that lies inside the evidence spans of that
    file: how much of what is quoted is evidence (a long quote around a short span scores low).

    :param span: the quote's [start, end) in the lesson file.
    :param file: the lesson file, as the annotations name it.
    :param evidence: the question's annotated spans (overlapping spans are counted once).
    """
    length = span[1] - span[0]
    if length <= 0:
        return 0.0
    inside = set()
    for e in evidence:
        if e.file == file:
            inside.update(range(max(span[0], e.start), min(span[1], e.end)))
    return len(inside) / length


def holds_by_words(quote: str, evidence: Sequence[EvidenceSpan]) -> bool:
    """The fallback for a quote not found in its file: one text holds the other (fuzzy, case-folded)."""
    return any(contains_evidence(e.text, [quote]) or contains_evidence(quote, [e.text]) for e in evidence)


def quote_kind(passage: str, start: int, end: int) -> str:
    """"sentence" when every unit of `passage` that [start, end) overlaps is a quotable sentence, else the
    first other kind among them (heading, title, label, question, fragment, code); "sentence" when the span
    overlaps no unit."""
    for u in passage_units(passage):
        if u.start < end and u.end > start and u.kind != QUOTABLE:
            return u.kind
    return QUOTABLE


class CachedScorer:
    """A generator's `score_continuations`, each (prompt, prefix, candidate) scored once and kept in a JSON
    file (written atomically after every call that scored something new).

    :param generator: the model (`supports_logprobs`).
    :param path: the cache file; one made for another model is not read (its model id is kept in it).
    """

    supports_logprobs = True

    def __init__(self, generator: Any, path: Path):
        self.generator = generator
        self.path = Path(path)
        self.model = repr(generator)
        self.scores: dict[str, dict[str, float]] = {}
        self.scored = 0  # candidates the model scored in this process (the rest came from the file)
        if self.path.is_file():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("model") == self.model and isinstance(data.get("scores"), dict):
                self.scores = data["scores"]

    def score_continuations(self, messages: list[dict], prefix: str, continuations: list[str],
                            first_tokens: int | None = None) -> list[float]:
        """As `Generator.score_continuations`; candidates scored before (same prompt and prefix) are read back.

        :raises GeneratorError: when the model fails.
        """
        from rag.common.atomic import write_json_atomic

        key = hashlib.sha256(json.dumps([messages, prefix, first_tokens], sort_keys=True).encode()).hexdigest()
        known = self.scores.setdefault(key, {})
        missing = [c for c in dict.fromkeys(continuations) if c not in known]
        if missing:
            for c, s in zip(missing, self.generator.score_continuations(messages, prefix, missing, first_tokens)):
                known[c] = float(s)
            self.scored += len(missing)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"model": self.model, "scores": self.scores})
        return [known[c] for c in continuations]


__all__ = ["CachedScorer", "MIN_SHARE", "evidence_share", "holds_by_words", "holds_evidence", "locate", "overlap", "quote_kind"]
