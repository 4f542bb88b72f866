"""Questions per chunk: ask the teacher model, parse its messy list, deduplicate, filter.

Duplicates. Two questions are the same question when they have the same *terms*: their words
lower-cased, split at hyphens and apostrophes, Snowball-stemmed (PyStemmer, as the BM25 index), with
function words that never change what is asked (articles, forms of be/do/have, pronouns, the plain
prepositions, "exactly"/"mainly"-style fillers) left out and "which" read as "what". So exact repeats,
case/punctuation/hyphen variants ("fine tuning" / "fine-tuning"), plurals and tenses, reorderings
("During fine-tuning, what does LoRA freeze?") and "Which X ..." / "What X ..." are dropped as duplicates.
Any other word is a term, and one term swapped, added or removed makes another question: "encoder" /
"decoder", "advantages" / "disadvantages", "fine-tuning" / "full fine-tuning", "does" / "does not"
("not", "no", "never", "without", "n't" are terms). The old test, rapidfuzz ratio >= 90 over the whole
string, scored "What does the encoder do in a transformer?" against the decoder question at 95 and dropped
it; a character similarity cannot tell a typo from the word that matters. What this rule
misses: a rephrasing with a synonym ("reduce" / "lower") is kept, at the cost of one extra sample, rather
than risk dropping a different question; and "Does X cause Y?" / "Does Y cause X?" count as the same.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from raft.prompts import is_small_model, question_messages
from rag.errors import BadReply

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
# Words that never change what a question asks (see the module docstring); every other word is a term.
FUNCTION_WORDS = frozenset("""
a an the is are was were be been being am do does did doing have has had having
it its they them their theirs this that these those there here i me my we us our you your he him his she her
of in on at for to by from with into onto as about and
s re ve ll d please exactly actually specifically precisely basically really main mainly primary primarily
typically usually generally briefly simply
""".split())
_SYNONYMS = {"which": "what", "whom": "who", "cannot": "can not", "nor": "not", "none": "no"}
_NEGATION = re.compile(r"\b(?:(ca)|(wo)|(\w+))n't\b")  # can't -> can not, won't -> will not, doesn't -> does not
_TERM = re.compile(r"[a-z0-9]+")


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


def _split_pieces(line: str) -> tuple[list[str], str]:
    """The pieces of `line` that end in "?" and the text after the last one, in linear time.

    (The regex `[^?]*[?]` it replaces retried from every position of a line without "?": quadratic time, minutes
    on a 200 KB line.)

    :param line: one line of a reply.
    :returns: (each piece up to and including its "?", the stripped rest after the last "?").
    """
    *asked, rest = line.split("?")
    return [piece + "?" for piece in asked], rest.strip()


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
        pieces, rest = _split_pieces(line)
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


_STEMMER = None


def question_terms(question: str) -> frozenset[str]:
    """The terms that decide what `question` asks (see the module docstring), Snowball-stemmed.

    :param question: one question.
    :returns: the set of stemmed terms; two questions are duplicates when their sets are equal.
    """
    global _STEMMER
    if _STEMMER is None:
        import Stemmer

        _STEMMER = Stemmer.Stemmer("english")
    text = question.lower().replace("’", "'")
    text = _NEGATION.sub(lambda m: f"{'can' if m.group(1) else 'will' if m.group(2) else m.group(3)} not", text)
    words: list[str] = []
    for w in _TERM.findall(text):
        words.extend(_SYNONYMS.get(w, w).split())
    return frozenset(_STEMMER.stemWords([w for w in words if w not in FUNCTION_WORDS]))


def dedupe(questions: list[str]) -> tuple[list[str], int]:
    """Questions in order without repeats or rephrasings of an earlier one (same `question_terms`).

    :param questions: candidate questions, best first.
    :returns: (the kept questions in their order, how many were dropped as duplicates).
    """
    kept: list[str] = []
    seen: set[frozenset[str]] = set()
    for q in questions:
        terms = question_terms(q)
        if terms in seen:
            continue
        seen.add(terms)
        kept.append(q)
    return kept, len(questions) - len(kept)


@dataclass
class QuestionResult:
    """The questions kept for one chunk, what was dropped and why, and the raw reply.

    `reason` is set when the reply itself was unusable (`BadReply.reason`, e.g. "reply_not_utf8"); `raw` then
    holds the error's message.
    """

    questions: list[str]
    rejected: Counter = field(default_factory=Counter)
    raw: str = ""
    reason: str | None = None


def generate_each(generator, batch: list, params) -> list[str | BadReply]:
    """The teacher's replies to `batch`, an unusable reply kept as its error rather than ending the batch.

    A backend that serves requests in parallel (an HTTP teacher) gets one call per item, so a reply rejected
    as `BadReply` (bytes that are not UTF-8, more text than model_max_reply_bytes) costs only its own item;
    an in-process model gets one batched call.

    :param generator: the teacher (rag.generation.base.Generator).
    :param batch: one message list per item.
    :param params: the generation parameters.
    :returns: per item, the reply's text or the BadReply it raised.
    :raises GeneratorError: any other failure (the server is down, the deadline passed): the caller skips
        the chunks for now and a rerun retries them.
    """
    if not generator.parallel_requests:
        return list(generator.generate_batch(batch, params))
    replies: list[str | BadReply] = []
    for messages in batch:
        try:
            replies.append(generator.generate(messages, params))
        except BadReply as e:
            replies.append(e)
    return replies


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
        # a list of n questions needs ~30 tokens each; a cap stops a rambling model from holding up a batch
        params = self.params.replace(max_new_tokens=min(self.params.max_new_tokens, 40 * self.n + 24))
        batch = [question_messages(t, self.n, self.small) for t in chunk_texts]
        return [select_questions(reply, self.n) if isinstance(reply, str) else
                QuestionResult([], Counter({f"question_{reply.reason}": 1, "chunk_no_questions": 1}), str(reply),
                               reply.reason)
                for reply in generate_each(self.generator, batch, params)]
