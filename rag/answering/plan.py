"""The plan stage of answering: everything before the model writes (txtai's RAG `__call__`, first half).

`Planner.plan()` validates the question and the per-call settings, condenses a follow-up (rag.answering.condense),
retrieves (a pasted quiz item as its stem and as its stem with the options), decides whether to abstain, and
fits the prompt to the model's window (rag.answering.window). The `Plan` it returns says whether a model is
needed and which mode answers ("abstain", "free", "grounded", "choice": rag.answering.modes); the stream
(rag.answering.stream) runs that mode. The answer is never generated here, so a server can refuse bad requests
and answer abstentions at once and queue only the plans that need the model. The one model call a plan may
make is condensing a follow-up with a large model (condense "llm", the default for HTTP models); it needs
the tokenizer to fit the prompt.

Each earlier turn of the conversation is clipped to MAX_TURN_CHARS before it is tokenised: a 5 MB earlier turn
used to be tokenised again on every passage-dropping step of fitting (several times the answer's own time, and hundreds of MB).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rag.answering import choices
from rag.answering.condense import condense
from rag.answering.window import fit_prompt
from rag.errors import RagError
from rag.generation.base import GenerationParams, Generator, Messages
from rag.retrieval.retriever import MODES, Hit

MAX_QUESTION_CHARS = 4000
MAX_TURN_CHARS = 4000  # an earlier turn longer than this is clipped (end kept) before it reaches the prompt
MAX_TOP_K = 100
ANSWER_MODES = ("auto", "grounded", "free")  # auto: grounded for in-process models, free for HTTP ones
PLAN_MODES = ("abstain", "free", "grounded", "choice")  # Plan.mode
INSTRUCTION_ROLES = ("system", "developer")  # the caller's instructions, added to the RAG system prompt


def validate_question(question: Any) -> str:
    """The question stripped, or a one-line error the user can act on.

    :param question: what the user typed.
    :returns: the question without surrounding whitespace.
    :raises RagError: not text, control characters or binary data, empty, or over MAX_QUESTION_CHARS.
    """
    if not isinstance(question, str):
        raise RagError("the question must be text")
    if "\x00" in question or sum(1 for c in question if ord(c) < 32 and c not in "\n\r\t") > 0:
        raise RagError("the question contains control characters or binary data: type it as plain text")
    q = question.strip()
    if not q:
        raise RagError("the question is empty: type a question about the course")
    if len(q) > MAX_QUESTION_CHARS:
        raise RagError(f"the question is {len(q):,} characters long; keep it under {MAX_QUESTION_CHARS:,}")
    return q


def split_history(history: Sequence[dict]) -> tuple[list[dict], list[str]]:
    """The conversation's turns and the caller's instructions, each turn clipped to MAX_TURN_CHARS.

    :param history: earlier messages, OpenAI style (`role`, `content` text); roles other than
        user/assistant/system/developer are ignored.
    :returns: (user/assistant turns as {"role", "content"} with non-empty text, system/developer texts).
    """
    turns: list[dict] = []
    instructions: list[str] = []
    for m in history:
        role, content = m.get("role"), m.get("content")
        if not isinstance(content, str) or not content.strip():
            continue
        if len(content) > MAX_TURN_CHARS:
            content = "…" + content[-MAX_TURN_CHARS:]  # the end of a long turn is what a follow-up refers to
        if role in ("user", "assistant"):
            turns.append({"role": role, "content": content})
        elif role in INSTRUCTION_ROLES:
            instructions.append(content.strip())
    return turns, instructions


class Searcher(Protocol):
    """What the plan needs of the retriever (rag.retrieval.retriever.Retriever is one)."""

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The top-k passages for `query`, best first."""
        ...

    def search_many(self, queries: Sequence[str], k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The top-k passages for several wordings of one question, the rankings fused."""
        ...

    def term_coverage(self, query: str) -> float:
        """Share of `query`'s IDF-weighted terms that occur in the indexed text, in [0, 1]."""
        ...


@dataclass
class Plan:
    """One answer, planned: the question, what was retrieved, whether to abstain, and the fitted prompt.

    :param question: the validated question. `query`: what was searched (a follow-up condensed).
    :param history: the earlier user/assistant turns, each clipped to MAX_TURN_CHARS.
    :param instructions: the caller's system/developer texts (in the prompt's system message).
    :param params: the generation settings of this answer.
    :param top_k: passages retrieved. `retrieval_mode`: dense/bm25/hybrid, None = the retriever's own.
    :param answer_mode: "grounded" or "free" (`auto` resolved for the model).
    :param choice: the options when the question lists them (rag.answering.choices), else None.
    :param hits: the passages retrieved, best first.
    :param abstained: the course does not cover the question: answered without the model.
    :param used_hits: the passages given to the model (the best ones that fit), [] when abstaining.
    :param messages: the chat prompt for the model, [] when abstaining.
    :param prompt_tokens: tokens of `messages` (0 when abstaining).
    :param timings: seconds per step so far ("condense", "retrieve").
    :param notes: what the user should know (passages left out to fit the window).
    """

    question: str
    query: str
    history: list[dict]
    instructions: list[str]
    params: GenerationParams
    top_k: int
    retrieval_mode: str | None
    answer_mode: str
    choice: choices.Choice | None
    hits: list[Hit]
    abstained: bool
    used_hits: list[Hit] = field(default_factory=list)
    messages: Messages = field(default_factory=list)
    prompt_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def needs_model(self) -> bool:
        """Whether answering runs the language model (False for an abstention)."""
        return not self.abstained

    @property
    def mode(self) -> str:
        """The mode that answers (one of PLAN_MODES): "abstain" without the model; "choice" for a grounded
        answer to a question that lists options; else the answer mode."""
        if self.abstained:
            return "abstain"
        if self.answer_mode == "grounded" and self.choice is not None:
            return "choice"
        return self.answer_mode

    @property
    def passages(self) -> list[str]:
        """The texts of the passages given to the model, in prompt order (passage n is item n - 1)."""
        return [h.chunk.text for h in self.used_hits]


def check_answer_mode(answer_mode: str) -> None:
    """:raises RagError: for a mode not in ANSWER_MODES, naming the valid ones."""
    if answer_mode not in ANSWER_MODES:
        raise RagError(f"unknown answer mode {answer_mode!r}: use one of {', '.join(ANSWER_MODES)}")


@dataclass(frozen=True)
class Planner:
    """Plans answers (see the module docstring); the settings are the defaults of every `plan()`.

    :param retriever: searches the course and knows its vocabulary (`Searcher`).
    :param generator: its tokenizer fits the prompt; its declarations (`local`, `prompt_format`) choose the
        answer mode for "auto" and the prompt format; asked only to condense in "llm" mode.
    :param top_k: passages per question. `retrieval_mode`: dense/bm25/hybrid (None = the retriever's own).
    :param params: default generation settings (the answer's length is reserved in the window).
    :param abstain_threshold: below this dense cosine of the best passage, and with less than
        `abstain_coverage` of the question's terms in the course, answer "not in the course" without the model.
    :param max_context_tokens: prompt budget (None = the model's window).
    :param condense_mode: follow-up rewriting, one of rag.answering.condense.CONDENSE_MODES.
    :param small_model: short prompts and no-model condensing.
    :param answer_mode: one of ANSWER_MODES.
    """

    retriever: Searcher
    generator: Generator
    top_k: int = 5
    retrieval_mode: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    abstain_threshold: float = 0.3
    abstain_coverage: float = 0.9
    max_context_tokens: int | None = None
    condense_mode: str = "auto"
    small_model: bool = False
    answer_mode: str = "auto"

    def resolve_answer_mode(self, answer_mode: str | None = None) -> str:
        """"grounded" or "free" for one answer: the given mode, else the planner's; "auto" is grounded for
        in-process models and free for HTTP ones (which can use either).

        :raises RagError: for a mode not in ANSWER_MODES.
        """
        mode = answer_mode or self.answer_mode
        check_answer_mode(mode)
        if mode == "auto":
            mode = "grounded" if self.generator.local else "free"
        return mode

    def should_abstain(self, query: str, hits: list[Hit]) -> bool:
        """Abstain when the best passage is far from the question (dense cosine) and the question's
        rarer words are not in the course either (the embedder misses jargon such as "PEFT")."""
        best = max((h.scores.get("dense", h.score) for h in hits), default=-1.0)
        if best >= self.abstain_threshold:
            return False
        return not hits or self.retriever.term_coverage(query) < self.abstain_coverage

    def plan(self, question: str, history: Sequence[dict] = (), *, params: GenerationParams | None = None,
             top_k: int | None = None, mode: str | None = None, answer_mode: str | None = None) -> Plan:
        """Plan the answer to `question`; per-call settings apply to this plan only.

        :param question: the user's question (validated: non-empty text, at most MAX_QUESTION_CHARS).
        :param history: earlier messages, OpenAI style ({"role", "content"}); user/assistant turns are the
            conversation (follow-ups are condensed with them), system/developer texts are added to the
            system prompt as the caller's instructions.
        :param params: generation settings for this answer (default: the planner's `params`).
        :param top_k: passages to retrieve, 1..MAX_TOP_K (default: the planner's `top_k`).
        :param mode: retrieval mode, one of rag.retrieval.retriever.MODES (default: the planner's).
        :param answer_mode: "grounded", "free" or "auto" (default: the planner's `answer_mode`).
        :returns: the Plan.
        :raises RagError: a bad question or setting, or a question whose best passage does not fit the
            model's window; GeneratorError for out-of-range generation settings.
        """
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K):
            raise RagError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}")
        if mode is not None and mode not in MODES:
            raise RagError(f"unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}")
        resolved = self.resolve_answer_mode(answer_mode)
        question = validate_question(question)
        params, top_k, mode = params or self.params, top_k or self.top_k, mode or self.retrieval_mode
        turns, instructions = split_history(history)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        # a pasted quiz item is searched as its stem and as its stem with the options, the two rankings fused
        # (Retriever.search_many): the options name the answer, but alone they pull in the wrong ones' passages
        # A pasted quiz item is self-contained: its "these" and "which of the following" point at its own options,
        # so it is never condensed with the conversation (nor is the model asked to rewrite it).
        choice = choices.parse_choice(question)
        query = choice.stem if choice else condense(question, turns, self.generator, mode=self.condense_mode,
                                                    small_model=self.small_model)
        timings["condense"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if choice:
            hits = self.retriever.search_many(choices.search_wordings(query, choice.options), top_k, mode)
        else:
            hits = self.retriever.search(query, top_k, mode)
        timings["retrieve"] = time.perf_counter() - t0
        plan = Plan(question, query, turns, instructions, params, top_k, mode, resolved, choice, hits,
                    self.should_abstain(query, hits), timings=timings)
        if not plan.abstained:
            # Fitting needs only the tokenizer: a question that cannot fit fails here, before any queueing.
            plan.used_hits, plan.messages = fit_prompt(question, hits, turns, self.generator, params=params,
                                                       max_context_tokens=self.max_context_tokens,
                                                       small_model=self.small_model, instructions=instructions)
            if len(plan.used_hits) < len(hits):
                plan.notes.append(f"{len(hits) - len(plan.used_hits)} lower-ranked passage(s) left out to fit "
                                  f"the model's context window")
            plan.prompt_tokens = self.generator.count_tokens(plan.messages)
        return plan
