"""The finalize stage of answering (haystack's AnswerBuilder): the answer's text cleaned, each sentence
attributed to the passage that supports it, every passage given to the model listed, the supporting ones first."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from rag.answering.answer import Answer, Source, make_source
from rag.answering.attribution import Encoder, Support, attribute, clean_markers
from rag.answering.grounding import Quote
from rag.answering.modes.result import ModeResult
from rag.answering.plan import Plan
from rag.retrieval.retriever import Hit

SNIPPET_CHARS = 200  # what is shown of a passage that does not support the answer
NOTHING_MATCHED = "no answer sentence could be matched to a passage; showing the passages retrieved"


def order_sources(hits: Sequence[Hit], supports: Sequence[Support], quote: Quote | None) -> list[Source]:
    """Every passage given to the model as a Source: the quoted one first, then the ones supporting an answer
    sentence (in prompt order), then the rest (not `cited`).

    :param hits: the passages given to the model, in prompt order (passage n is hits[n - 1]).
    :param supports: the answer's sentences matched to passages (attribution.attribute).
    :param quote: the grounded answer's quote, if any.
    :returns: the Sources; a supporting one shows its best-matching sentence, the quoted one the quote.
    """
    by_passage: dict[int, list[Support]] = {}
    for s in supports:
        by_passage.setdefault(s.passage, []).append(s)
    cited, rest = [], []
    for n, h in enumerate(hits, start=1):
        if quote is not None and n == quote.passage:
            cited.insert(0, make_source(n, h, quote.text, quote=quote))
        elif n in by_passage:
            cited.append(make_source(n, h, max(by_passage[n], key=lambda s: s.score).snippet))
        else:
            rest.append(make_source(n, h, h.snippet[:SNIPPET_CHARS], cited=False))
    return cited + rest


@dataclass(frozen=True)
class AnswerBuilder:
    """Builds the Answer once the mode has given its text.

    :param embedder: the retriever's embedder (attribution compares answer and passage sentences).
    """

    embedder: Encoder

    def build(self, plan: Plan, result: ModeResult | None, raw: str, *, timings: dict[str, float],
              notes: Sequence[str]) -> Answer:
        """The final Answer.

        :param plan: the planned answer.
        :param result: the mode's result; None when the answer was closed before its mode finished (the text
            so far is then attributed as the planned mode's, with no quote).
        :param raw: the text the mode gave, joined.
        :param timings: seconds per step so far; "attribute" is added.
        :param notes: notes so far; one is added when no sentence matches a passage.
        :returns: the Answer (an abstention lists the retrieved passages, none cited).
        """
        result = result or ModeResult(plan.answer_mode)
        timings, notes = dict(timings), list(notes)
        if plan.abstained:
            sources = [make_source(i, h, h.snippet[:SNIPPET_CHARS], cited=False)
                       for i, h in enumerate(plan.hits, start=1)]
            return Answer(plan.question, plan.query, raw, True, sources, plan.hits, timings=timings, notes=notes,
                          answer_mode=result.answer_mode)
        text = clean_markers(raw, len(plan.used_hits)).strip()
        t0 = time.perf_counter()
        supports = attribute(text, plan.used_hits, self.embedder)
        timings["attribute"] = time.perf_counter() - t0
        sources = order_sources(plan.used_hits, supports, result.quote)
        if not any(s.cited for s in sources):
            notes.append(NOTHING_MATCHED)
        short = result.short_answer if result.answer_mode == "grounded" else text
        return Answer(plan.question, plan.query, text, False, sources, plan.hits, supports, timings, notes,
                      result.answer_mode, result.quote, short, result.choice)
