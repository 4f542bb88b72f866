"""Grounded answers: choose the supporting sentence among the passages' own sentences, then answer after it.

A 135M model asked to "answer using the passages" wanders off (the LoRA passage was retrieved,
the answer was about fine-tuning in general). Choosing is easier than writing: every sentence of the
passages is a candidate quote, the model scores each one as the continuation of
`##Reason: The answer to "<question>" is in this sentence: ##begin_quote##` (mean token log-probability,
one prompt prefill whose key/value cache is shared by all candidates: `Generator.score_continuations`),
the retriever's embedder scores each one against the question (cosine), and the two are combined after
standardising each over the candidates (`combine`, weight `RETRIEVER_WEIGHT` on the retriever). The chosen
sentence is an exact substring of its passage (its character span is kept), so the quote shown to the
student is verified by construction; the short answer is then generated with the quote already written
in the assistant's turn (RAFT's format), and a model without log-probabilities (an HTTP server) falls
back to the retriever's score alone.

Which spans are candidates (`spans`, default `QUOTE_SPANS`): "lines", every sentence and list item of at
least three words (headings with `#` aside), as it was; "content", only the sentences that state something
(`rag.answering.sentences`: never a heading, a slide or section title, a list label, a question or a
fragment); "content-pairs", those and each two adjacent ones of one line, for an answer stated in two
sentences. A pair competes with the single sentences on the same two scores. Measured in
eval/quotes_benchmark.py (does the quote overlap the annotated evidence of the independent courses).

This is the one implementation of the sentence candidates and the model's quote choice: RAFT's guided
answers (raft/synth/answers.py) call `quote_candidates` and `pick_quote` from here (rag never imports raft).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag.answering.sentences import quote_spans
from rag.errors import RagError
from rag.generation.base import Generator, Messages

BEGIN_QUOTE = "##begin_quote##"  # RAFT's markers (raft/prompts.py holds the same strings)
END_QUOTE = "##end_quote##"
GUIDED_REASON = '##Reason: The answer to "{question}" is in this sentence: '
GUIDED_FINAL = "Short answer:"  # what the small model continues best (RAFT stores it as `<ANSWER>:`)
ANSWER_MARK = "<ANSWER>:"  # RAFT's final-answer marker (raft/prompts.py holds the same string)
#: The text before the short answer, by the model's prompt format (rag.generation.base.Generator.prompt_format):
#: a RAFT-tuned model was trained to write its final answer after `<ANSWER>:`.
FINAL_MARKS = {"chat": GUIDED_FINAL, "raft": ANSWER_MARK}
#: How a RAFT-format reply is shown while it streams (readable): markers become plain punctuation.
_DISPLAY = {"##Reason:": "", BEGIN_QUOTE: '"', END_QUOTE: '"', ANSWER_MARK: "Answer:"}
MIN_QUOTE_CHARS = 8  # shorter "quotes" are too weak to verify anything
MAX_CANDIDATES = 24  # quote candidates scored per passage (the longest sentences when there are more)
#: Weight of the retriever's (question-sentence cosine) standardised score against the model's; measured
#: in docs/results/choices.md (eval/answers_benchmark.py).
RETRIEVER_WEIGHT = 0.5
#: Candidates the model scores: the retriever's best sentences (one batch over the shared prompt cache;
#: scoring all ~40-60 sentences of five passages takes several times as long as scoring 8).
MAX_SCORED = 8
#: A sentence found in at least this many passages of the index is boilerplate (a "Refer: <course URL>" line
#: under every quiz item, a slide footer, a copyright line): it supports no particular answer.
BOILERPLATE_MIN_PASSAGES = 3
#: What a quote may be (see the module docstring): "lines" (every sentence and list item), "content" (only
#: sentences that state something), "content-pairs" (those, and two adjacent ones of one line).
SPAN_MODES = ("lines", "content", "content-pairs")
#: The default of the grounded quote choice; chosen by eval/quotes_benchmark.py (docs/results/choices.md: the quote
#: holds the annotated evidence more often on the pooled independent courses, paired interval above zero).
QUOTE_SPANS = "content-pairs"

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9*])")
_LINE_MARKER = re.compile(r"^(?:#{1,6}|[-*+•>]|\d{1,3}[.)]|\*\*\d{1,3}\.\*\*)\s+")


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


def quote_candidates(text: str, max_candidates: int = MAX_CANDIDATES, exclude: Collection[str] = (), *,
                     spans: str = "lines") -> list[str]:
    """The sentences and list items of `text` worth quoting, in order, whitespace collapsed, markdown
    line markers stripped, headings skipped, at least 3 words and MIN_QUOTE_CHARS characters.

    :param text: a passage (markdown or plain text).
    :param max_candidates: keep at most this many (the longest, in their original order).
    :param exclude: sentences never to offer (`boilerplate_sentences` of the index).
    :param spans: one of SPAN_MODES; "lines" (the default here, for option support and RAFT's guided
        answers) as above; "content" only the sentences that state something; "content-pairs" those and
        two adjacent ones (`candidate_spans`).
    :returns: candidate quotes; each is in `text` up to whitespace (`find_span` locates it).
    :raises RagError: an unknown `spans`.
    """
    if spans != "lines":
        return [" ".join(text[a:b].split()) for a, b in candidate_spans(text, max_candidates, exclude, spans=spans)]
    out: list[str] = []
    for line in _lines(text):
        if line.startswith("#"):
            continue  # headings are titles, not statements
        for piece in _SENTENCE.split(_LINE_MARKER.sub("", line)):
            cand = " ".join(piece.split()).strip()
            if len(cand) >= MIN_QUOTE_CHARS and len(cand.split()) >= 3 and cand not in out and cand not in exclude:
                out.append(cand)
    if max_candidates and len(out) > max_candidates:
        keep = set(sorted(out, key=len, reverse=True)[:max_candidates])
        out = [t for t in out if t in keep]
    return out


def candidate_spans(text: str, max_candidates: int = MAX_CANDIDATES, exclude: Collection[str] = (), *,
                    spans: str = QUOTE_SPANS) -> list[tuple[int, int]]:
    """Character spans [start, end) of `text` that may be quoted, in order.

    :param text: a passage.
    :param max_candidates: at most this many single sentences (the longest; 0 = all); a pair is kept when
        both its sentences are.
    :param exclude: sentences never to offer, whitespace collapsed (`boilerplate_sentences`); nor a pair
        holding one.
    :param spans: one of SPAN_MODES ("lines": `quote_candidates` located with `find_span`; "content" and
        "content-pairs": `rag.answering.sentences.quote_spans`).
    :returns: the spans; `text[start:end]` is the passage's own wording of each candidate.
    :raises RagError: an unknown `spans`.
    """
    if spans not in SPAN_MODES:
        raise RagError(f"unknown quote spans {spans!r}: use one of {', '.join(SPAN_MODES)}")
    if spans == "lines":
        found = (find_span(text, c) for c in quote_candidates(text, max_candidates, exclude))
        return [s for s in found if s]
    units = quote_spans(text, pairs=spans == "content-pairs", exclude=exclude)
    singles = [u for u in units if u.sentences == 1]
    if max_candidates and len(singles) > max_candidates:
        kept = sorted(singles, key=lambda u: len(u.text), reverse=True)[:max_candidates]
        starts, ends = {u.start for u in kept}, {u.end for u in kept}
        units = [u for u in units if u.start in starts and u.end in ends]
    return [(u.start, u.end) for u in units]


def boilerplate_sentences(passages: Iterable[str], min_passages: int = BOILERPLATE_MIN_PASSAGES) -> frozenset[str]:
    """The quote candidates that recur in at least `min_passages` distinct passages: lines a course repeats
    (a reference under every quiz item, a footer) that would otherwise win a quote by matching any question.

    :param passages: every passage text of an index (about 1 ms per 100 passages).
    :param min_passages: how many passages a sentence must be in to count as boilerplate.
    :returns: the sentences, whitespace-collapsed as `quote_candidates` returns them.
    """
    counts: Counter[str] = Counter()
    for text in passages:
        counts.update(set(quote_candidates(text, max_candidates=0)))
    return frozenset(c for c, n in counts.items() if n >= min_passages)


def find_span(text: str, quote: str) -> tuple[int, int] | None:
    """Character span [start, end) of `quote` in `text`, whitespace-tolerant; None when it is not there.

    :returns: offsets into `text` such that `text[start:end]` is the passage's own wording of the quote.
    """
    quote = quote.strip()
    if not quote:
        return None
    i = text.find(quote)
    if i >= 0:
        return i, i + len(quote)
    m = re.search(r"\s+".join(re.escape(w) for w in quote.split()), text)
    return (m.start(), m.end()) if m else None


def pick_quote(generator: Generator, messages: Messages, prefix: str, candidates: Sequence[str]) -> int:
    """Index of the candidate the model finds likeliest after the chat prompt + `prefix` (RAFT's guided
    quote choice: decoding constrained to the given sentences).

    :raises GeneratorError: when the backend gives no log-probabilities (`supports_logprobs` False).
    """
    scores = generator.score_continuations(messages, prefix, list(candidates))
    return max(range(len(scores)), key=scores.__getitem__)


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 1e-9 else np.zeros_like(x)


def combine(model: Sequence[float] | None, retriever: Sequence[float], weight: float = RETRIEVER_WEIGHT) -> np.ndarray:
    """(1 - weight) * z(model) + weight * z(retriever), z standardising over the candidates.

    :param model: the model's mean log-probability per candidate, or None (no log-probabilities: retriever only).
    :param retriever: the retriever's score per candidate (cosine of question and sentence).
    :param weight: 0..1, the retriever's share.
    :returns: one combined score per candidate (higher is better).
    """
    r = _standardise(np.asarray(retriever, dtype=float))
    if model is None:
        return r
    return (1 - weight) * _standardise(np.asarray(model, dtype=float)) + weight * r


@dataclass
class Quote:
    """The supporting sentence: passage number (1-based, as in the prompt), its exact text and span."""

    passage: int
    text: str
    start: int
    end: int
    score: float
    model_score: float | None = None
    retriever_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: passage, text, start, end (character offsets in the passage), score."""
        return {"passage": self.passage, "text": self.text, "start": self.start, "end": self.end,
                "score": round(self.score, 4)}


def verify_quote(quote: Quote, passage_text: str) -> bool:
    """Whether `quote.text` is exactly `passage_text[quote.start:quote.end]` (and not empty)."""
    return bool(quote.text) and passage_text[quote.start:quote.end] == quote.text


def score_candidates(generator: Generator, messages: Messages, question: str, passages: Sequence[str],
                     embedder: Any, *, use_model: bool = True, max_scored: int = MAX_SCORED,
                     exclude: Collection[str] = (), spans: str = QUOTE_SPANS,
                     ) -> tuple[list[tuple[int, str, int, int]], np.ndarray | None, np.ndarray]:
    """The candidate sentences of `passages` and their two scores, before combining.

    :param use_model: also score with the model (needs `generator.supports_logprobs`).
    :param exclude: sentences never to offer (`boilerplate_sentences`).
    :param max_scored: the model scores only the retriever's `max_scored` best sentences (0 = all).
    :param spans: which spans are candidates, one of SPAN_MODES (`candidate_spans`).
    :returns: (candidates as (passage number, exact passage text, start, end), the model's mean token
        log-probability per candidate or None, the retriever's cosine per candidate).
    :raises GeneratorError: when the model fails while scoring.
    :raises RagError: an unknown `spans`.
    """
    cands: list[tuple[int, str, int, int]] = []
    for n, text in enumerate(passages, start=1):
        for start, end in candidate_spans(text, exclude=exclude, spans=spans):
            cands.append((n, text[start:end], start, end))
    if not cands:
        return [], None, np.zeros(0)
    vecs = embedder.encode([question] + [" ".join(c[1].split()) for c in cands])
    retr = np.asarray(vecs[1:] @ vecs[0], dtype=float)
    if max_scored and len(cands) > max_scored:
        keep = sorted(np.argsort(-retr, kind="stable")[:max_scored])
        cands, retr = [cands[i] for i in keep], retr[keep]
    model = None
    if use_model and len(cands) > 1:
        prefix = GUIDED_REASON.format(question=" ".join(question.split())) + BEGIN_QUOTE
        model = np.asarray(generator.score_continuations(messages, prefix, [" ".join(c[1].split()) for c in cands]))
    return cands, model, retr


def choose_quote(generator: Generator, messages: Messages, question: str, passages: Sequence[str],
                 embedder: Any, *, weight: float = RETRIEVER_WEIGHT, use_model: bool | None = None,
                 max_scored: int = MAX_SCORED, exclude: Collection[str] = (), spans: str = QUOTE_SPANS) -> Quote | None:
    """The best supporting sentence among the sentences of `passages`, by model and retriever together.

    :param generator: the chat model; its `score_continuations` is used when it `supports_logprobs`.
    :param messages: the grounded prompt (passages + question) the model sees.
    :param question: the question, written into the reasoning prefix.
    :param passages: the passage texts given to the model, in prompt order.
    :param embedder: the retriever's embedder (`encode(list[str]) -> (n, dim)` unit vectors).
    :param weight: retriever share in `combine` (1.0 = retriever only, 0.0 = model only).
    :param use_model: score with the model (default: when it supports log-probabilities and weight < 1).
    :param max_scored: the model scores only the retriever's `max_scored` best sentences (0 = all).
    :param exclude: sentences never to choose (`boilerplate_sentences` of the index).
    :param spans: which spans may be chosen, one of SPAN_MODES (default `QUOTE_SPANS`).
    :returns: the chosen Quote (exact substring of its passage, with span), or None without candidates.
    :raises GeneratorError: when the model fails while scoring.
    :raises RagError: an unknown `spans`.
    """
    if use_model is None:
        use_model = bool(generator.supports_logprobs) and weight < 1.0
    cands, model, retr = score_candidates(generator, messages, question, passages, embedder,
                                          use_model=use_model, max_scored=max_scored, exclude=exclude, spans=spans)
    if not cands:
        return None
    total = combine(model, retr, weight if model is not None else 1.0)
    best = int(np.argmax(total))
    n, text, start, end = cands[best]
    return Quote(n, text, start, end, float(total[best]), None if model is None else float(model[best]),
                 float(retr[best]))


def answer_prefix(question: str, quote: str, final: str = GUIDED_FINAL) -> str:
    """The assistant turn written before the short answer: reason, the quote in RAFT markers, then `final`
    (`Short answer:` for a chat model, `<ANSWER>:` for a RAFT-tuned one: FINAL_MARKS)."""
    reason = GUIDED_REASON.format(question=" ".join(question.split()))
    return f"{reason}{BEGIN_QUOTE}{' '.join(quote.split())}{END_QUOTE}\n{final}"


def readable(pieces: Iterable[str]) -> Iterator[str]:
    """A RAFT-format reply as it streams, made readable: `##Reason:` dropped, the quote markers shown as
    quotation marks, `<ANSWER>:` as `Answer:` (a marker split across pieces is held back until it is whole).

    :param pieces: the model's text pieces.
    :returns: the rewritten pieces; their join is the rewritten join.
    """
    markers = sorted(_DISPLAY, key=len, reverse=True)
    buffer, started = "", False
    for piece in pieces:
        buffer += piece
        for m in markers:
            buffer = buffer.replace(m, _DISPLAY[m])
        if not started:  # the reply opens with `##Reason: `: no leading space left behind
            buffer = buffer.lstrip()
            started = bool(buffer) and not any(m.startswith(buffer) for m in markers)
        keep = max((n for m in markers for n in range(1, len(m)) if buffer.endswith(m[:n])), default=0)
        if len(buffer) > keep:
            yield buffer[: len(buffer) - keep]
            buffer = buffer[len(buffer) - keep:]
    if buffer:
        yield buffer


_ANSWER_LEAD = re.compile(r"^(?:<ANSWER>:\s*)?(?:the\s+)?(?:short\s+)?answer(?:\s+is)?\s*[:\-]\s*", re.IGNORECASE)
_ANY_MARKER = re.compile(r"#{1,3}\s*(?:begin|end)[\s_-]*quote\s*#{1,3}|<\s*/?\s*answer\s*>:?", re.IGNORECASE)


def clean_short_answer(text: str) -> str:
    """The generated short answer as shown: one line, answer lead-ins and RAFT markers removed; "" when
    nothing with a letter or digit is left (the caller then shows the quote as the answer)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _ANY_MARKER.sub("", _ANSWER_LEAD.sub("", line)).strip(" *_\"")
    return line if any(ch.isalnum() for ch in line) else ""
