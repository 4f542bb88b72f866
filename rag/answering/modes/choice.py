"""The choice mode: a pasted quiz item gets its option chosen first (rag.answering.choices), then the sentence of
the passages that supports it quoted; the chosen option is the short answer. Nothing to quote: the option alone."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from collections.abc import Generator as Pieces

from rag.answering import choices, grounding
from rag.answering.attribution import Encoder
from rag.answering.modes.grounded import cancelled, quote_head, quoted
from rag.answering.modes.result import ChosenOption, ModeResult
from rag.generation.base import Generator, Messages


def choice_answer(generator: Generator, messages: Messages, item: choices.Choice, passages: Sequence[str],
                  embedder: Encoder, *, weight: float = choices.RETRIEVER_WEIGHT,
                  quote_weight: float = grounding.RETRIEVER_WEIGHT,
                  exclude: Collection[str] = ()) -> Pieces[str, None, ModeResult]:
    """Yield the quote that supports the chosen option, then the option; or the option alone.

    :param generator: the model (asked for option scores when weight < 1, for quote scores when it
        `supports_logprobs`).
    :param messages: the fitted prompt (Plan.messages).
    :param item: the question's options (Plan.choice).
    :param passages: the passage texts given to the model, in prompt order.
    :param embedder: the retriever's embedder.
    :param weight: the options' support in the passages against the model's scores (choices.pick_option).
    :param quote_weight: the retriever's share in choosing the quote.
    :param exclude: sentences never quoted nor counted as support (the course's boilerplate); the options
        restated in the passages are excluded too (the quiz item itself supports every option).
    :returns: (as the generator's return value) a "grounded" ModeResult with the choice.
    :raises GeneratorError: the model failed; GenerationCancelled when cancelled while scoring.
    """
    t0 = time.perf_counter()
    exclude = frozenset(exclude) | choices.restated_options(passages, [*item.options, item.stem])
    picked = choices.pick_option(generator, messages, item, passages, embedder, weight, exclude)
    chosen = ChosenOption(tuple(item.labels[i] for i in picked.chosen), tuple(item.options[i] for i in picked.chosen),
                          picked)
    timings = {"choice": time.perf_counter() - t0}
    quote = grounding.choose_quote(generator, messages, choices.claim(item.stem, chosen.option), passages, embedder,
                                   weight=quote_weight, exclude=exclude)
    timings["quote"] = time.perf_counter() - t0
    if not quoted(quote, passages):
        yield chosen.text
        return ModeResult("grounded", short_answer=chosen.text, choice=chosen, timings=timings)
    assert quote is not None
    timings["first_token"] = time.perf_counter() - t0
    yield quote_head(quote)
    if cancelled():
        return ModeResult("grounded", quote=quote, choice=chosen, timings=timings)
    short = grounding.clean_short_answer(chosen.text) or " ".join(quote.text.split())  # chosen, not written
    yield short
    timings["generate"] = time.perf_counter() - t0
    return ModeResult("grounded", "stop", quote, short, chosen, timings)
