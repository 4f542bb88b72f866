"""The grounded mode: the supporting sentence is chosen first among the passages' own sentences (rag.answering.
grounding: the model's log-probabilities combined with the retriever's score), shown as a quote verified against
its passage, and a short answer is then written after it. No sentence to quote: a hand-over to the free mode."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from collections.abc import Generator as Pieces

from rag.answering import grounding, prompts
from rag.answering.attribution import Encoder
from rag.answering.budget import TokenBudget
from rag.answering.modes.result import Handover, ModeResult
from rag.generation.base import GenerationParams, Generator, Messages, current_cancel

SHORT_ANSWER_TOKENS = 48  # the answer after the quote is one short line
NOTHING_TO_QUOTE = "no sentence of the passages could be quoted; answering freely"


def quoted(quote: grounding.Quote | None, passages: Sequence[str]) -> bool:
    """Whether `quote` exists and is its passage's own text at its span (grounding.verify_quote).

    :param passages: the passage texts in prompt order (the quote's `passage` is 1-based).
    """
    return quote is not None and grounding.verify_quote(quote, passages[quote.passage - 1])


def quote_head(quote: grounding.Quote) -> str:
    """The answer's first piece: the quote in quotation marks, whitespace collapsed, with its passage marker."""
    return f"\"{' '.join(quote.text.split())}\" [{quote.passage}]\n\n"


def cancelled() -> bool:
    """Whether the answer's `cancel_scope` (rag.generation.base) was cancelled: the stream's `cancel()`."""
    scope = current_cancel()
    return scope is not None and scope.is_set()


def write_short_answer(generator: Generator, messages: Messages, question: str, quote: str,
                       params: GenerationParams) -> str:
    """The model's one-line answer after `quote`, not yet cleaned.

    A model that `supports_prefixes` continues its own reply with the quote already written in it (RAFT
    style); another (an HTTP server) gets the quote in the question (prompts.grounded_messages).

    :raises GeneratorError: the model failed.
    """
    if generator.supports_prefixes:
        prefix = grounding.answer_prefix(question, quote, grounding.FINAL_MARKS[generator.prompt_format])
        return generator.generate_batch([messages], params, prefixes=[prefix])[0]
    return "".join(generator.stream(prompts.grounded_messages(messages, quote), params))


def grounded_answer(generator: Generator, messages: Messages, question: str, passages: Sequence[str],
                    embedder: Encoder, *, params: GenerationParams, weight: float = grounding.RETRIEVER_WEIGHT,
                    exclude: Collection[str] = ()) -> Pieces[str, None, ModeResult | Handover]:
    """Yield the quote, then the short answer written after it.

    :param generator: the model (scores the quote candidates when it `supports_logprobs`, writes the answer).
    :param messages: the fitted prompt (Plan.messages).
    :param question: the question (written into the quote-choosing prefix).
    :param passages: the passage texts given to the model, in prompt order.
    :param embedder: the retriever's embedder (scores the candidates against the question).
    :param params: the answer's generation settings; max_new_tokens bounds the short answer, not the quote.
    :param weight: the retriever's share in choosing the quote (grounding.combine).
    :param exclude: sentences never quoted (the course's boilerplate).
    :returns: (as the generator's return value) a "grounded" ModeResult with the quote and short answer; or,
        before any piece, a Handover to the free mode when no sentence can be quoted.
    :raises GeneratorError: the model failed; GenerationCancelled when cancelled while scoring.
    """
    t0 = time.perf_counter()
    quote = grounding.choose_quote(generator, messages, question, passages, embedder, weight=weight, exclude=exclude)
    timings = {"quote": time.perf_counter() - t0}
    if not quoted(quote, passages):
        return Handover(NOTHING_TO_QUOTE, timings)
    assert quote is not None
    head = quote_head(quote)
    timings["first_token"] = time.perf_counter() - t0
    yield head
    if cancelled():
        return ModeResult("grounded", quote=quote, timings=timings)
    # one token more than the request's limit, so a short answer that limit cuts is seen to be cut (budget.py)
    budget = TokenBudget(generator.count_tokens, params.max_new_tokens)
    short_params = params.replace(max_new_tokens=min(budget.limit + 1, SHORT_ANSWER_TOKENS), stop=["\n", *params.stop])
    short = budget.take(grounding.clean_short_answer(
        write_short_answer(generator, messages, question, quote.text, short_params)))
    finish = "length" if budget.cut else "stop"
    short = short or " ".join(quote.text.split())
    yield short
    timings["generate"] = time.perf_counter() - t0
    return ModeResult("grounded", finish, quote, short, timings=timings)
