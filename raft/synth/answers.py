"""Chain-of-thought answers quoting the oracle, and the check of every quote against the oracle's text.

A quote found in the oracle (ignoring case and whitespace) is replaced by the oracle's own words; a
near miss (rapidfuzz partial_ratio >= 90) is snapped to the closest span of the oracle; anything else is
a fabricated quote and rejects the sample, as does a missing `<ANSWER>:`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from rapidfuzz import fuzz

from raft.prompts import (
    ANSWER_MARK,
    BEGIN_QUOTE,
    END_QUOTE,
    answer_messages,
    is_small_model,
)

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


def is_degenerate(text: str) -> bool:
    """A looping answer ("The answer is: The answer is: ..."): one word trigram repeated over a third of it."""
    words = text.lower().split()
    if len(words) < 9:
        return False
    top = Counter(tuple(words[i:i + 3]) for i in range(len(words) - 2)).most_common(1)[0][1]
    return top >= 3 and 3 * top >= len(words) / 3


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
    elif is_degenerate(final):
        reason = "degenerate_answer"
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


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9*])")
_LINE_MARKER = re.compile(r"^(?:#{1,6}|[-*+•>]|\d{1,3}[.)]|\*\*\d{1,3}\.\*\*)\s+")
GUIDED_REASON = '##Reason: The answer to "{question}" is in this sentence: '
GUIDED_FINAL = "Short answer:"  # what the small model continues best; stored as `<ANSWER>:`
_ANSWER_LEAD = re.compile(r"^(?:the\s+)?(?:short\s+)?answer(?:\s+is)?\s*[:\-]\s*", re.IGNORECASE)
MAX_CANDIDATES = 24  # quote candidates scored per question (the longest sentences when there are more)


def _lines(text: str) -> list[str]:
    """Logical lines: a hard-wrapped line (lower-case start, previous line not ended) joins the previous one."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            out.append("")
            continue
        if out and out[-1] and not _LINE_MARKER.match(line) and line[0].islower() and out[-1][-1] not in ".!?:":
            out[-1] = f"{out[-1]} {line}"
        else:
            out.append(line)
    return out


def quote_candidates(oracle: str) -> list[str]:
    """The oracle's sentences and list items worth quoting, in order (markdown markers stripped)."""
    out: list[str] = []
    for line in _lines(oracle):
        if line.startswith("#"):
            continue  # headings are titles, not statements
        for piece in _SENTENCE.split(_LINE_MARKER.sub("", line)):
            text = " ".join(piece.split()).strip()
            if len(text) >= MIN_QUOTE_CHARS and len(text.split()) >= 3 and text not in out:
                out.append(text)
    if len(out) > MAX_CANDIDATES:
        keep = set(sorted(out, key=len, reverse=True)[:MAX_CANDIDATES])
        out = [t for t in out if t in keep]
    return out


class AnswerWriter:
    """`answer(question, oracle_text) -> AnswerResult`: the teacher's CoT answer, verified against the oracle.

    Two modes. "free": the teacher writes the whole CoT answer (capable models behind HTTP). "guided"
    (in-process models, which rarely follow the format unaided): the model picks the oracle sentence to
    quote (the candidate it finds most likely after the quote marker, i.e. decoding constrained to the
    oracle's sentences), then writes the final answer after `<ANSWER>:` with that quote in front of it.
    Both go through the same verification.
    """

    def __init__(self, generator, params, small: bool | None = None, require_quote: bool = True,
                 mode: str = "auto", answer_tokens: int = 64) -> None:
        self.generator = generator
        self.params = params
        self.small = is_small_model(generator) if small is None else small
        self.require_quote = require_quote
        if mode == "auto":
            mode = "guided" if hasattr(generator, "score_continuations") else "free"
        if mode not in ("guided", "free"):
            from rag.errors import RagError

            raise RagError(f"unknown answer mode {mode!r}: use auto, guided or free")
        if mode == "guided" and not hasattr(generator, "score_continuations"):
            from rag.errors import RagError

            raise RagError(f"answer mode 'guided' needs an in-process model; {generator.model_id} is not one")
        self.mode = mode
        self.answer_tokens = answer_tokens

    def __call__(self, question: str, oracle: str) -> AnswerResult:
        return self.many([(question, oracle)])[0]

    def many(self, items: list[tuple[str, str]]) -> list[AnswerResult]:
        """Answers to (question, oracle) pairs, batched when the backend can."""
        if not items:
            return []
        if self.mode == "free":
            batch = [answer_messages(q, o, self.small) for q, o in items]
            raws = self.generator.generate_batch(batch, self.params)
            return [verify_answer(raw, o, self.require_quote) for raw, (_, o) in zip(raws, items)]
        return self._guided(items)

    def _guided(self, items: list[tuple[str, str]]) -> list[AnswerResult]:
        from dataclasses import replace

        messages, prefixes, heads = [], [], []
        for question, oracle in items:
            msgs = answer_messages(question, oracle, small=True)
            reason = GUIDED_REASON.format(question=" ".join(question.split()))
            cands = quote_candidates(oracle)
            head = reason
            if cands:
                scores = self.generator.score_continuations(msgs, reason + BEGIN_QUOTE, cands)
                best = cands[max(range(len(cands)), key=scores.__getitem__)]
                head = f"{reason}{BEGIN_QUOTE}{best}{END_QUOTE}\n"
            messages.append(msgs)
            heads.append(head)
            prefixes.append(head + GUIDED_FINAL)
        params = replace(self.params, max_new_tokens=min(self.params.max_new_tokens, self.answer_tokens),
                         stop=["\n"])
        finals = self.generator.generate_batch(messages, params, prefixes=prefixes)
        return [verify_answer(f"{h}{ANSWER_MARK} {_ANSWER_LEAD.sub('', f.strip())}", o, self.require_quote)
                for h, f, (_, o) in zip(heads, finals, items)]
