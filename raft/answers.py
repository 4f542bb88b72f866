"""Chain-of-thought answers quoting the oracle, and the check of every quote against the oracle's text.

A quote found in the oracle (ignoring case and whitespace) is replaced by the oracle's own words; a
near miss (rapidfuzz partial_ratio >= 90) is snapped to the closest span of the oracle; anything else is
a fabricated quote and rejects the sample, as does a missing `<ANSWER>:`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rapidfuzz import fuzz

from raft.prompts import ANSWER_MARK, BEGIN_QUOTE, END_QUOTE, answer_messages, is_small_model

SNAP_SCORE = 90.0  # partial_ratio at or above which a quote is snapped to the oracle's words
MIN_QUOTE_CHARS = 8  # shorter "quotes" are too weak to verify anything
_QUOTE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)
_ANSWER = re.compile(re.escape(ANSWER_MARK) + r"[ \t]*(.*)", re.DOTALL)


def _normalise_with_map(text: str) -> tuple[str, list[int]]:
    """Lower-cased text with whitespace runs collapsed to one space, and each character's original offset."""
    out: list[str] = []
    where: list[int] = []
    in_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if not in_space and out:
                out.append(" ")
                where.append(i)
            in_space = True
            continue
        in_space = False
        out.append(ch.lower())
        where.append(i)
    if out and out[-1] == " ":
        out.pop()
        where.pop()
    return "".join(out), where


def _norm(text: str) -> str:
    return _normalise_with_map(text)[0]


@dataclass
class QuoteCheck:
    """One quote's verdict: 'exact', 'snapped' or 'fabricated', with the oracle's words when verified."""

    quote: str
    status: str
    text: str | None = None
    score: float = 100.0


def _widen_to_words(oracle: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and oracle[start - 1].isalnum() and oracle[start].isalnum():
        start -= 1
    while end < len(oracle) and oracle[end - 1].isalnum() and oracle[end].isalnum():
        end += 1
    return start, end


def check_quote(quote: str, oracle: str, snap_score: float = SNAP_SCORE) -> QuoteCheck:
    """Find `quote` in `oracle` ignoring case and whitespace; else snap a near miss; else call it fabricated."""
    q = _norm(quote).strip(" \"'“”")
    if len(q) < MIN_QUOTE_CHARS:
        return QuoteCheck(quote, "fabricated", None, 0.0)
    onorm, where = _normalise_with_map(oracle)
    at = onorm.find(q)
    if at >= 0:
        start, end = where[at], where[at + len(q) - 1] + 1
        return QuoteCheck(quote, "exact", oracle[start:end], 100.0)
    align = fuzz.partial_ratio_alignment(q, onorm)
    if align is None or align.score < snap_score or align.dest_end <= align.dest_start:
        return QuoteCheck(quote, "fabricated", None, align.score if align else 0.0)
    start, end = _widen_to_words(oracle, where[align.dest_start], where[align.dest_end - 1] + 1)
    return QuoteCheck(quote, "snapped", oracle[start:end].strip(), align.score)


@dataclass
class AnswerResult:
    """A verified CoT answer (ok) or the reason it was rejected."""

    ok: bool
    reason: str | None
    cot_answer: str
    final_answer: str
    quotes: list[QuoteCheck]
    raw: str

    @property
    def quotes_verified(self) -> int:
        return sum(q.status != "fabricated" for q in self.quotes)

    @property
    def quotes_snapped(self) -> int:
        return sum(q.status == "snapped" for q in self.quotes)


def verify_answer(raw: str, oracle: str, require_quote: bool = True) -> AnswerResult:
    """Check a CoT reply against the oracle; rewrite verified quotes with the oracle's own words."""
    text = raw.strip()
    m = _ANSWER.search(text)
    final = m.group(1).strip() if m else ""
    checks = [check_quote(q, oracle) for q in _QUOTE.findall(text)]
    reason = None
    if not m:
        reason = "no_answer_marker"
    elif not final:
        reason = "empty_answer"
    elif any(c.status == "fabricated" for c in checks):
        reason = "fabricated_quote"
    elif require_quote and not checks:
        reason = "no_quote"
    if reason:
        return AnswerResult(False, reason, text, final, checks, raw)
    it = iter(checks)
    cot = _QUOTE.sub(lambda _m: f"{BEGIN_QUOTE}{next(it).text}{END_QUOTE}", text)
    # keep one final answer line, as in the reference ("... <ANSWER>: final")
    head = cot[: _ANSWER.search(cot).start()].rstrip()
    cot = f"{head}\n{ANSWER_MARK} {final}" if head else f"{ANSWER_MARK} {final}"
    return AnswerResult(True, None, cot, final, checks, raw)


class AnswerWriter:
    """`answer(question, oracle_text) -> AnswerResult`: the teacher's CoT answer, verified against the oracle."""

    def __init__(self, generator, params, small: bool | None = None, require_quote: bool = True) -> None:
        self.generator = generator
        self.params = params
        self.small = is_small_model(generator) if small is None else small
        self.require_quote = require_quote

    def __call__(self, question: str, oracle: str) -> AnswerResult:
        messages = answer_messages(question, oracle, self.small)
        raw = self.generator.generate(messages, self.params)
        return verify_answer(raw, oracle, self.require_quote)
