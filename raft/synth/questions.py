"""Questions per chunk: ask the teacher model, parse its messy list, deduplicate, filter."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from rapidfuzz import fuzz

from raft.prompts import is_small_model, question_messages

# A list marker at the start of a line or piece: "1.", "1)", "(1)", "-", "*", "•", "Q1:", "Question 2 -", "**3.**".
_MARKER = re.compile(
    r"^\s*(?:[*_]{1,2}\s*)?(?:"
    r"(?:question|q)\s*\d{0,3}\s*[:.)\-–]"  # Q1: / Question 2 - / Q:
    r"|\(?\d{1,3}[.)\]:]"  # 1. 1) (1) 1:
    r"|[-*•+·–]"  # bullets
    r"|#{1,6}"  # markdown heading
    r")(?:\s*[*_]{1,2})?\s*",
    re.IGNORECASE,
)
_PIECE = re.compile(r"[^?]*\?")
_SENTENCE_BREAK = re.compile(r"(?<=[.!:;])\s+(?=[A-Z\"'(])")
_QUESTION_START = re.compile(
    r"^(?:what|why|how|when|where|which|who|whom|whose|is|are|was|were|do|does|did|can|could|should|"
    r"would|will|has|have|had|in|on|according|for|if|under|to|name|explain|describe|compare)\b",
    re.IGNORECASE,
)
_ABOUT_SOURCE = re.compile(
    r"\b(?:the|this|that|above|given|provided|following)\s+(?:text|passage|document|author|excerpt|"
    r"paragraph|article|context|snippet)s?\b|\bof the following\b",
    re.IGNORECASE,
)
MIN_WORDS, MAX_WORDS = 4, 40
NEAR_DUPLICATE = 90  # rapidfuzz ratio (0..100) at or above which two questions count as the same


def _strip_markers(text: str) -> str:
    prev = None
    while prev != text:  # "- 1. Q:" has several
        prev = text
        text = _MARKER.sub("", text, count=1)
    return text.strip().strip("*_\"' ").strip()


def _last_sentence(piece: str) -> str:
    """Drop stray text before the question in the same piece ("Sure! What is X?" -> "What is X?")."""
    parts = _SENTENCE_BREAK.split(piece)
    if len(parts) > 1 and _QUESTION_START.match(parts[-1]):
        return parts[-1]
    if ":" in piece:  # "Here are the questions: What is X?"
        head, _, tail = piece.rpartition(":")
        tail = tail.strip()
        if _QUESTION_START.match(tail) and not _QUESTION_START.match(head.strip()):
            return tail
    return piece


def parse_questions(text: str) -> list[str]:
    """Every candidate question in a model's reply: numbered/bulleted/"Q1:" lists, preamble lines,
    several questions on one line. Lines without a question mark (preambles, answers) yield nothing;
    a question broken over two lines is joined."""
    candidates: list[str] = []
    carry = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            carry = ""
            continue
        starts_item = bool(_MARKER.match(line))
        line = _strip_markers(line)
        if carry and not starts_item:
            line = f"{carry} {line}"
        carry = ""
        pieces = _PIECE.findall(line)
        rest = _PIECE.sub("", line).strip()
        for piece in pieces:
            q = _last_sentence(_strip_markers(piece.strip()))
            q = re.sub(r"\s+", " ", q).strip()
            if q and q != "?":
                candidates.append(q)
        if rest and not pieces and starts_item:
            carry = rest  # maybe the first half of a wrapped question
    return candidates


def rejection_reason(question: str) -> str | None:
    """Why `question` is unusable, or None: not a question, too short/long, about 'the text'."""
    if not question.endswith("?"):
        return "not_a_question"
    words = len(question.split())
    if words < MIN_WORDS:
        return "too_short"
    if words > MAX_WORDS:
        return "too_long"
    if _ABOUT_SOURCE.search(question):
        return "about_the_text"
    return None


def _key(q: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", q.lower()).strip()


def dedupe(questions: list[str], threshold: int = NEAR_DUPLICATE) -> tuple[list[str], int]:
    """Questions in order without exact or near duplicates (rapidfuzz ratio >= threshold); and how many went."""
    kept: list[str] = []
    keys: list[str] = []
    for q in questions:
        k = _key(q)
        if any(k == other or fuzz.ratio(k, other) >= threshold for other in keys):
            continue
        kept.append(q)
        keys.append(k)
    return kept, len(questions) - len(kept)


@dataclass
class QuestionResult:
    """The questions kept for one chunk, what was dropped and why, and the raw reply."""

    questions: list[str]
    rejected: Counter = field(default_factory=Counter)
    raw: str = ""


def select_questions(reply: str, n: int) -> QuestionResult:
    """Parse, filter and deduplicate a reply; keep at most `n` questions."""
    rejected: Counter = Counter()
    good = []
    for q in parse_questions(reply):
        reason = rejection_reason(q)
        if reason:
            rejected[f"question_{reason}"] += 1
        else:
            good.append(q)
    good, dups = dedupe(good)
    if dups:
        rejected["question_duplicate"] += dups
    if not good:
        rejected["chunk_no_questions"] += 1
    return QuestionResult(good[:n], rejected, reply)


class QuestionGenerator:
    """`qgen(chunk_text) -> QuestionResult`: up to `n` clean questions that the chunk answers."""

    def __init__(self, generator, n: int, params, small: bool | None = None) -> None:
        self.generator = generator
        self.n = n
        self.params = params
        self.small = is_small_model(generator) if small is None else small

    def __call__(self, chunk_text: str) -> QuestionResult:
        return self.many([chunk_text])[0]

    def many(self, chunk_texts: list[str]) -> list[QuestionResult]:
        """Questions for several chunks, batched when the backend can."""
        from dataclasses import replace

        # a list of n questions needs ~30 tokens each; a cap stops a rambling model from holding up a batch
        params = replace(self.params, max_new_tokens=min(self.params.max_new_tokens, 40 * self.n + 24))
        batch = [question_messages(t, self.n, self.small) for t in chunk_texts]
        return [select_questions(reply, self.n) for reply in self.generator.generate_batch(batch, params)]
