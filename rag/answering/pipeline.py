"""The composition root of answering: `RagPipeline` wires the stages, which never call back into it.

`ask()` = plan (rag.answering.plan: validate, condense, retrieve, abstain, fit the window; the answer is not
generated) -> stream (rag.answering.stream: the plan's mode, rag.answering.modes, runs as it is iterated) ->
answer (rag.answering.finalize: attribution, source order, the Answer). Two answer modes: "grounded", the
default for in-process models (a quote chosen among the passages' sentences, then a short answer; a pasted
quiz item gets its option chosen first) and "free" (the model writes the answer). Either way every passage
given to the model is listed in `sources`, the ones that support the answer marked (`cited`) and first.

Settings that vary per request (generation parameters, top-k, retrieval mode, answer mode) are arguments of
`ask()`, never swapped on the shared pipeline: `rag serve` answers many requests with one pipeline, and a swap
under a lock serialised every request behind the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rag.answering import choices, grounding
from rag.answering.finalize import AnswerBuilder
from rag.answering.modes.run import ModeTools, run_mode
from rag.answering.plan import Plan, Planner, check_answer_mode
from rag.answering.stream import AnswerStream
from rag.generation.base import GenerationParams, Generator
from rag.retrieval.retriever import Retriever


@dataclass(eq=False)
class RagPipeline:
    """Answers course questions from retrieved passages with a streaming generator.

    :param retriever: finds the passages; its embedder attributes the answer and scores quotes.
    :param generator: writes the answer (its declared capabilities choose the answer mode for "auto").
    :param top_k: passages per question; `mode`: retrieval mode (None = the retriever's own).
    :param params: default generation settings; `ask()` takes per-call ones.
    :param abstain_threshold: below this dense cosine of the best passage, and with less than
        `abstain_coverage` of the question's words in the passages, answer "not in the course" without the model.
    :param max_context_tokens: prompt budget (None = the model's window).
    :param condense_mode: follow-up rewriting: "auto", "llm", "concat" or "off" (rag.answering.condense).
    :param small_model: None = the generator's declaration.
    :param answer_mode: one of rag.answering.plan.ANSWER_MODES.
    :param retriever_weight: the grounded mode's weight of the retriever in choosing the quote.
    :param choice_retriever_weight: the weight of the options' support in the passages against the model's
        scores, when a question lists options (rag.answering.choices).
    :raises RagError: an unknown answer mode.
    """

    retriever: Retriever
    generator: Generator
    top_k: int = field(default=5, kw_only=True)
    mode: str | None = field(default=None, kw_only=True)
    params: GenerationParams = field(default_factory=GenerationParams, kw_only=True)
    abstain_threshold: float = field(default=0.3, kw_only=True)
    abstain_coverage: float = field(default=0.9, kw_only=True)
    max_context_tokens: int | None = field(default=None, kw_only=True)
    condense_mode: str = field(default="auto", kw_only=True)
    small_model: bool | None = field(default=None, kw_only=True)
    answer_mode: str = field(default="auto", kw_only=True)
    retriever_weight: float = field(default=grounding.RETRIEVER_WEIGHT, kw_only=True)
    choice_retriever_weight: float = field(default=choices.RETRIEVER_WEIGHT, kw_only=True)
    _boilerplate: tuple[Any, frozenset[str]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_answer_mode(self.answer_mode)
        self.params = self.params or GenerationParams()
        if self.small_model is None:
            self.small_model = self.generator.small_model  # declared by the backend

    def planner(self) -> Planner:
        """The plan stage with this pipeline's current settings."""
        return Planner(self.retriever, self.generator, top_k=self.top_k, retrieval_mode=self.mode,
                       params=self.params, abstain_threshold=self.abstain_threshold,
                       abstain_coverage=self.abstain_coverage, max_context_tokens=self.max_context_tokens,
                       condense_mode=self.condense_mode, small_model=bool(self.small_model),
                       answer_mode=self.answer_mode)

    def boilerplate(self) -> frozenset[str]:
        """Sentences the course repeats across passages (grounding.boilerplate_sentences), never quoted;
        computed once per index generation (the retriever's passages of a new one are a new object)."""
        groups = self.retriever.passages()
        cached = self._boilerplate
        if cached is None or cached[0] is not groups:
            cached = self._boilerplate = (groups, grounding.boilerplate_sentences(g.text for g in groups.passages))
        return cached[1]

    def plan(self, question: str, history: Sequence[dict] = (), *, params: GenerationParams | None = None,
             top_k: int | None = None, mode: str | None = None, answer_mode: str | None = None) -> Plan:
        """Plan the answer to `question` (Planner.plan: its parameters, its errors); the model is not asked
        to answer, and is asked nothing at all unless a follow-up is condensed in "llm" mode."""
        return self.planner().plan(question, history, params=params, top_k=top_k, mode=mode, answer_mode=answer_mode)

    def stream(self, plan: Plan) -> AnswerStream:
        """The stream that answers `plan`: its mode runs as the stream is iterated.

        :param plan: a plan of this pipeline (`plan()`).
        :returns: the AnswerStream; nothing has run yet.
        """
        quotes = plan.mode in ("grounded", "choice")
        tools = ModeTools(self.generator, self.retriever.embedder, self.boilerplate() if quotes else frozenset(),
                          self.retriever_weight, self.choice_retriever_weight)
        return AnswerStream(plan, run_mode(plan, tools), AnswerBuilder(self.retriever.embedder),
                            self.generator.count_tokens)

    def ask(self, question: str, history: Sequence[dict] = (), *, params: GenerationParams | None = None,
            top_k: int | None = None, mode: str | None = None, answer_mode: str | None = None) -> AnswerStream:
        """Start answering `question`: the plan now, generation as the stream is iterated.

        Per-call settings apply to this answer only; the pipeline's own settings are never changed, so one
        pipeline can serve concurrent requests with different settings.

        :param question: the user's question (validated: non-empty text, at most plan.MAX_QUESTION_CHARS).
        :param history: earlier messages, OpenAI style ({"role", "content"}); user/assistant turns are the
            conversation (follow-ups are condensed with them), system/developer texts are added to the
            system prompt as the caller's instructions.
        :param params: generation settings for this answer (default: the pipeline's `params`).
        :param top_k: passages to retrieve, 1..plan.MAX_TOP_K (default: the pipeline's `top_k`).
        :param mode: retrieval mode, one of rag.retrieval.retriever.MODES (default: the pipeline's `mode`).
        :param answer_mode: "grounded", "free" or "auto" (default: the pipeline's `answer_mode`).
        :returns: an AnswerStream; its `plan` says already whether the model is needed; iterate it for text
            pieces, `.answer()` for the Answer with its sources.
        :raises RagError: a bad question or setting, or a question whose best passage does not fit the
            model's window; GeneratorError for out-of-range generation settings.
        """
        return self.stream(self.plan(question, history, params=params, top_k=top_k, mode=mode,
                                     answer_mode=answer_mode))
