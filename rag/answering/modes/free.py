"""The free mode: the model writes the answer from the passages, streamed as it comes, within max_new_tokens."""

from __future__ import annotations

import time
from collections.abc import Generator as Pieces

from rag.answering import grounding
from rag.answering.budget import TokenBudget
from rag.answering.modes.result import ModeResult
from rag.generation.base import GenerationParams, Generator, Messages


def free_answer(generator: Generator, messages: Messages, params: GenerationParams) -> Pieces[str, None, ModeResult]:
    """Stream the model's answer to `messages`, cut to `params.max_new_tokens` (rag.answering.budget).

    A RAFT-format model's reply (`generator.prompt_format` "raft") is shown readable (grounding.readable).
    The model's stream is closed in this thread when the mode ends, early or not.

    :param generator: the model.
    :param messages: the fitted prompt (Plan.messages).
    :param params: the answer's generation settings.
    :returns: (as the generator's return value) a "free" ModeResult: finish_reason "length" when the limit
        cut the answer; timings "first_token" and "generate" in seconds.
    :raises GeneratorError: the model failed (raised while iterating).
    """
    t0 = time.perf_counter()
    first = None
    budget = TokenBudget(generator.count_tokens, params.max_new_tokens)
    raw: list[str] = []
    # one token more than the budget: a model that would have gone on is seen to be cut (budget.py)
    stream = generator.stream(messages, params.replace(max_new_tokens=budget.limit + 1))
    kept = (raw.append(piece) or piece for piece in stream)
    shown = grounding.readable(kept) if generator.prompt_format == "raft" else kept
    try:
        for piece in shown:
            if first is None:
                first = time.perf_counter() - t0
            piece = budget.take(piece)
            if piece:
                yield piece
            if budget.cut:
                break
    finally:
        # Closed explicitly, in this thread: the backend's own cleanup (stop flag, join of its worker)
        # must not wait for the garbage collector, which may run it on the worker thread itself.
        stream.close()
    elapsed = time.perf_counter() - t0
    timings = {"first_token": first if first is not None else elapsed, "generate": elapsed}
    finish = "length" if budget.cut or budget.over("".join(raw)) else "stop"
    return ModeResult("free", finish, timings=timings)
