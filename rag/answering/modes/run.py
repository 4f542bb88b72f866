"""The mode stage's driver: run the mode a plan names, and act on a mode's hand-over."""

from __future__ import annotations

from collections.abc import Generator as Pieces
from dataclasses import dataclass, field, replace

from rag.answering import choices, grounding, prompts
from rag.answering.attribution import Encoder
from rag.answering.modes.choice import choice_answer
from rag.answering.modes.free import free_answer
from rag.answering.modes.grounded import grounded_answer
from rag.answering.modes.result import Handover, ModeResult
from rag.answering.plan import Plan
from rag.generation.base import Generator


@dataclass(frozen=True)
class ModeTools:
    """What the modes work with besides the plan, all passed in by whoever wires the answering.

    :param generator: the model.
    :param embedder: the retriever's embedder (quote and option support).
    :param boilerplate: sentences never quoted (grounding.boilerplate_sentences of the index).
    :param quote_weight: the retriever's share in choosing a quote (grounding.combine).
    :param choice_weight: the options' support against the model's scores (choices.pick_option).
    """

    generator: Generator
    embedder: Encoder
    boilerplate: frozenset[str] = field(default_factory=frozenset)
    quote_weight: float = grounding.RETRIEVER_WEIGHT
    choice_weight: float = choices.RETRIEVER_WEIGHT


def run_mode(plan: Plan, tools: ModeTools) -> Pieces[str, None, ModeResult]:
    """Yield the answer's text pieces in the plan's mode; return its ModeResult.

    "abstain" gives prompts.ABSTAIN without the model. A grounded answer with nothing to quote hands over to
    the free mode (its Handover's note and timings come first in the result).

    :param plan: the planned answer (rag.answering.plan).
    :param tools: the collaborators of the modes.
    :returns: (as the generator's return value) the ModeResult of the mode that answered.
    :raises GeneratorError: the model failed (raised while iterating).
    """
    gen = tools.generator
    if plan.mode == "abstain":
        yield prompts.ABSTAIN
        return ModeResult(plan.answer_mode)
    if plan.mode == "choice":
        assert plan.choice is not None
        return (yield from choice_answer(gen, plan.messages, plan.choice, plan.passages, tools.embedder,
                                         weight=tools.choice_weight, quote_weight=tools.quote_weight,
                                         exclude=tools.boilerplate))
    if plan.mode == "grounded":
        result = yield from grounded_answer(gen, plan.messages, plan.question, plan.passages, tools.embedder,
                                            params=plan.params, weight=tools.quote_weight, exclude=tools.boilerplate)
        if isinstance(result, ModeResult):
            return result
        free = yield from free_answer(gen, plan.messages, plan.params)  # the hand-over: the free mode answers
        return handed_over(result, free)
    return (yield from free_answer(gen, plan.messages, plan.params))


def handed_over(handover: Handover, result: ModeResult) -> ModeResult:
    """`result` of the mode handed over to, with the hand-over's note and timings first."""
    return replace(result, timings={**handover.timings, **result.timings}, notes=[handover.note, *result.notes])
