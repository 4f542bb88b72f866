"""Chain-of-thought answers quoting the oracle, and the check of every quote against the oracle's text.

A quote found in the oracle (ignoring case and whitespace) is replaced by the oracle's own words; a
near miss (rapidfuzz partial_ratio >= 90) is snapped to the closest span of the oracle; anything else is
a fabricated quote and rejects the sample.

A kept answer parses to exactly one clean final answer (`parse_answer`, the one strict parser): one
`<ANSWER>:` mark, outside every quote, followed by one non-empty line that holds no marker and is the
end of the reply, with every `##begin_quote##` closed by its `##end_quote##`. A reply with
two `<ANSWER>:` lines was once kept with both in `final_answer` (the old parser took everything after the first
mark); every other shape the checks cannot verify is rejected too, with its reason (`REASONS`), which
`raft generate` writes to rejected.jsonl with the raw reply. The rebuilt answer (quotes in the oracle's
own words) is parsed again before it is accepted, so an oracle whose text itself holds a marker cannot
smuggle a second answer into a kept sample. Consumers that split on the last mark (the RAFT reference's
`format.py`: `cot_answer.split("<ANSWER>: ")[-1]`) read the same final answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

from rapidfuzz import fuzz

from raft.prompts import (
    ANSWER_MARK,
    BEGIN_QUOTE,
    END_QUOTE,
    QUOTE,
    answer_messages,
    is_small_model,
)
from raft.synth.questions import generate_each
from rag.answering.grounding import (  # the one implementation of quote candidates and the model's choice
    GUIDED_FINAL,
    GUIDED_REASON,
    MAX_CANDIDATES,  # noqa: F401  (re-exported: raft callers read it here)
    QUOTE_SPANS,
    pick_quote,
    quote_candidates,
)

SNAP_SCORE = 90.0  # partial_ratio at or above which a quote is snapped to the oracle's words
MIN_QUOTE_CHARS = 8  # shorter "quotes" are too weak to verify anything
# Any spelling of the markers a model may write ("<Answer>:", "</ANSWER>", "## BEGIN_QUOTE ##", "##end quote#"):
# only the canonical spellings count, every other one is a malformed marker.
_LOOSE_ANSWER = re.compile(r"<\s*(/?)\s*answer\s*>(?:[ \t]*:)?", re.IGNORECASE)
_CANONICAL_QUOTE = re.compile(re.escape(BEGIN_QUOTE) + "|" + re.escape(END_QUOTE))
_LOOSE_QUOTE = re.compile(r"#{1,3}\s*(begin|end)[\s_-]*quote\s*#{1,3}", re.IGNORECASE)
PLACEHOLDER_ANSWERS = {"$answer", "answer", "$answer$", "{answer}", "<answer>", "...", "n/a"}

# Why a reply is rejected (the `reason` in rejected.jsonl; `answer_<reason>` in the stats).
REASONS = {
    "no_answer_marker": "no `<ANSWER>:` line",
    "multiple_answers": "more than one `<ANSWER>:` mark",
    "malformed_answer_marker": "an answer tag other than `<ANSWER>:` (a closing tag, another spelling)",
    "answer_in_quote": "the `<ANSWER>:` mark is inside a quote",
    "text_after_answer": "the final answer is not the last line of the reply",
    "empty_answer": "nothing (or only punctuation) after `<ANSWER>:`",
    "placeholder_answer": "the template's `$answer` instead of an answer",
    "marker_in_answer": "a quote marker inside the final answer",
    "unbalanced_quote": "a `##begin_quote##` without its `##end_quote##`, or the reverse, or nested quotes",
    "malformed_quote_marker": "a quote marker spelt another way",
    "degenerate_answer": "a looping final answer",
    "fabricated_quote": "a quote that is not in the oracle (or too short to verify)",
    "marker_in_quote": "a verified quote whose oracle text holds a marker",
    "no_quote": "no quote of the oracle (required by default)",
    "reply_not_utf8": "the teacher's reply held bytes that are not UTF-8",
    "reply_too_long": "the teacher's reply had more text than model_max_reply_bytes (cut off)",
}


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


def _quote_structure(text: str) -> str | None:
    """Why the quote markers of `text` are not well formed, or None: canonical spelling, begin/end alternating."""
    # canonical markers first: a quote may start with a markdown heading ("##begin_quote#### LoRA")
    if _LOOSE_QUOTE.search(_CANONICAL_QUOTE.sub("\0", text)):
        return "malformed_quote_marker"
    open_ = False
    for m in _CANONICAL_QUOTE.finditer(text):
        is_begin = m.group(0) == BEGIN_QUOTE
        if is_begin == open_:  # a begin inside a quote, or an end outside one
            return "unbalanced_quote"
        open_ = is_begin
    return "unbalanced_quote" if open_ else None


def parse_answer(text: str) -> tuple[str | None, str | None]:
    """The one final answer of a chain-of-thought reply, strictly.

    A reply parses when it has exactly one `<ANSWER>:` mark (no other spelling of it, no closing tag),
    outside every quote, its quote markers are canonical and balanced, and the mark is followed by one
    non-empty line that ends the reply and holds no marker.

    :param text: the reply (leading/trailing whitespace is ignored).
    :returns: `(final_answer, None)` when it parses, else `(None, reason)` with a key of `REASONS`.
    """
    text = text.strip()
    bad_quotes = _quote_structure(text)
    if bad_quotes:
        return None, bad_quotes
    quotes = [(q.start(), q.end()) for q in QUOTE.finditer(text)]
    marks = list(_LOOSE_ANSWER.finditer(text))
    if any(a < m.start() < b for m in marks for a, b in quotes):
        return None, "answer_in_quote"
    if not marks:
        return None, "no_answer_marker"
    opening = [m for m in marks if not m.group(1)]
    if len(opening) > 1:
        return None, "multiple_answers"
    if len(marks) > 1 or marks[0].group(0) != ANSWER_MARK:
        return None, "malformed_answer_marker"
    final = text[marks[0].end():].strip()
    if _LOOSE_QUOTE.search(final):
        return None, "marker_in_answer"
    if "\n" in final:
        return None, "text_after_answer"
    final = " ".join(final.split()).strip("*_ ")  # "**<ANSWER>:** x" -> "x"
    if not any(ch.isalnum() for ch in final):
        return None, "empty_answer"
    if final.lower().strip(" .") in PLACEHOLDER_ANSWERS:
        return None, "placeholder_answer"
    return final, None


def verify_answer(raw: str, oracle: str, require_quote: bool = True) -> AnswerResult:
    """Check a CoT reply against the oracle; rewrite verified quotes with the oracle's own words.

    :param raw: the teacher's reply.
    :param oracle: the oracle chunk's text, which every quote must come from.
    :param require_quote: reject a reply that quotes nothing (`no_quote`).
    :returns: an `AnswerResult`; `ok` only when the reply parses to one clean final answer
        (`parse_answer`), every quote is found (or snapped) in the oracle, the answer does not loop, and
        the rebuilt answer still parses to that same final answer. Otherwise `reason` is a key of `REASONS`.
    """
    text = raw.strip()
    final, reason = parse_answer(text)
    checks = [check_quote(q, oracle) for q in QUOTE.findall(text)]
    if reason is None and is_degenerate(final):
        reason = "degenerate_answer"
    elif reason is None and any(c.status == "fabricated" for c in checks):
        reason = "fabricated_quote"
    elif reason is None and require_quote and not checks:
        reason = "no_quote"
    elif reason is None and any(_LOOSE_ANSWER.search(c.text) or _LOOSE_QUOTE.search(c.text) for c in checks):
        reason = "marker_in_quote"  # the oracle's own words hold a marker: the rebuilt answer would not parse
    if reason:
        return AnswerResult(False, reason, text, final or "", checks, raw)
    it = iter(checks)
    cot = QUOTE.sub(lambda _m: f"{BEGIN_QUOTE}{next(it).text}{END_QUOTE}", text)
    # keep one final answer line, as in the reference ("... <ANSWER>: final")
    head = cot[: cot.index(ANSWER_MARK)].rstrip()
    cot = f"{head}\n{ANSWER_MARK} {final}" if head else f"{ANSWER_MARK} {final}"
    again, why = parse_answer(cot)
    if again != final:  # cannot happen after the checks above; a kept sample must parse, so make sure
        return AnswerResult(False, why or "multiple_answers", text, final, checks, raw)
    return AnswerResult(True, None, cot, final, checks, raw)


_ANSWER_LEAD = re.compile(r"^(?:the\s+)?(?:short\s+)?answer(?:\s+is)?\s*[:\-]\s*", re.IGNORECASE)


def _scores_continuations(generator) -> bool:
    """Whether `generator` can score continuations (guided answers): its declared `supports_logprobs`
    (rag.generation.base.Generator; the base class's `score_continuations` raises without it)."""
    return bool(generator.supports_logprobs)


class AnswerWriter:
    """`answer(question, oracle_text) -> AnswerResult`: the teacher's CoT answer, verified against the oracle.

    Two modes. "free": the teacher writes the whole CoT answer (capable models behind HTTP). "guided"
    (in-process models, which rarely follow the format unaided): the model picks the oracle sentence to
    quote (the candidate it finds most likely after the quote marker, i.e. decoding constrained to the
    oracle's sentences), then writes the final answer after `<ANSWER>:` with that quote in front of it.
    Both go through the same verification.
    """

    def __init__(self, generator, params, small: bool | None = None, require_quote: bool = True,
                 mode: str = "auto", answer_tokens: int = 64, exclude: Collection[str] = ()) -> None:
        """:param exclude: sentences a guided answer never quotes (`boilerplate_sentences` of the index)."""
        self.exclude = frozenset(exclude)
        self.generator = generator
        self.params = params
        self.small = is_small_model(generator) if small is None else small
        self.require_quote = require_quote
        if mode == "auto":
            mode = "guided" if _scores_continuations(generator) else "free"
        if mode not in ("guided", "free"):
            from rag.errors import RagError

            raise RagError(f"unknown answer mode {mode!r}: use auto, guided or free")
        if mode == "guided" and not _scores_continuations(generator):
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
            raws = generate_each(self.generator, batch, self.params)
            return [verify_answer(raw, o, self.require_quote) if isinstance(raw, str) else
                    AnswerResult(False, raw.reason, "", "", [], str(raw)) for raw, (_, o) in zip(raws, items)]
        return self._guided(items)

    def _guided(self, items: list[tuple[str, str]]) -> list[AnswerResult]:
        messages, prefixes, heads = [], [], []
        for question, oracle in items:
            msgs = answer_messages(question, oracle, small=True)
            reason = GUIDED_REASON.format(question=" ".join(question.split()))
            # the spans the product quotes from (statements, or two adjacent ones), so the tuned model learns
            # the answers it will be asked to give: no captions, links, headings or fragments as quotes
            cands = quote_candidates(oracle, exclude=self.exclude, spans=QUOTE_SPANS)
            head = reason
            if cands:
                best = cands[pick_quote(self.generator, msgs, reason + BEGIN_QUOTE, cands)]
                head = f"{reason}{BEGIN_QUOTE}{best}{END_QUOTE}\n"
            messages.append(msgs)
            heads.append(head)
            prefixes.append(head + GUIDED_FINAL)
        params = self.params.replace(max_new_tokens=min(self.params.max_new_tokens, self.answer_tokens),
                         stop=["\n"])
        finals = self.generator.generate_batch(messages, params, prefixes=prefixes)
        return [verify_answer(f"{h}{ANSWER_MARK} {_ANSWER_LEAD.sub('', f.strip())}", o, self.require_quote)
                for h, f, (_, o) in zip(heads, finals, items)]
