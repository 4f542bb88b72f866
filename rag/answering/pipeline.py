"""The RAG loop: condense -> retrieve -> (abstain?) -> prompt -> [quote] -> stream -> attribute citations.

Two answer modes (issue 14). "grounded", the default for in-process models: the supporting sentence is
chosen first among the passages' own sentences (rag.answering.grounding: the model's log-probabilities
combined with the retriever's score), shown as a quote verified against its passage, and a short answer is
generated with the quote already written in the assistant's turn. "free": the model writes the answer from
the passages, as before. Either way every passage given to the model is listed in `sources`, the ones
that support the answer marked (`cited`) and first.

Settings that vary per request (generation parameters, top-k, retrieval mode) are arguments of
`RagPipeline.ask()`, never swapped on the shared pipeline: `rag serve` answers many requests with one
pipeline, and a swap under a lock serialised every request behind the model (issue 10, item 4).

`ask()` does everything that needs no model before it returns (validation, retrieval, the abstention
decision, fitting the prompt to the model's window), so a server can answer abstentions and refuse
bad requests at once and queue only the requests that really need the model. Each earlier turn of the
conversation is clipped to `MAX_TURN_CHARS` before it is tokenised: a 5 MB earlier turn used to be
tokenised again on every passage-dropping step of `fit_prompt` (35-41 s and +350 MB for an 8 s answer).
"""

from __future__ import annotations

import inspect
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rag.answering import choices, grounding, prompts
from rag.answering.answer import Answer, Source, make_source
from rag.answering.attribution import Support, attribute, clean_markers
from rag.answering.budget import TokenBudget
from rag.errors import RagError
from rag.generation.base import GenerationParams, Generator, cancel_scope
from rag.retrieval.retriever import MODES, Hit, Retriever

MAX_QUESTION_CHARS = 4000
MAX_TURN_CHARS = 4000  # an earlier turn longer than this is clipped (end kept) before it reaches the prompt
MAX_TOP_K = 100
ANSWER_MODES = ("auto", "grounded", "free")  # auto: grounded for in-process models, free for HTTP ones
SHORT_ANSWER_TOKENS = 48  # the grounded mode's answer after the quote is one short line
INSTRUCTION_ROLES = ("system", "developer")  # the caller's instructions, added to the RAG system prompt
_FOLLOW_UP = re.compile(r"^\s*(and|also|but|so|what about|how about)\b|\b(it|its|they|them|their|this|that|these|those|"
                        r"he|she|the same|the other|the former|the latter)\b", re.IGNORECASE)


def validate_question(question: Any) -> str:
    """Reject empty, oversized or non-text questions with a message the user can act on."""
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


class Response:
    """One answer in progress: iterate for text pieces as they stream; .answer() gives the final Answer.

    Built by `RagPipeline.ask()`, which has already retrieved, decided whether to abstain and fitted the
    prompt; the model only runs while the Response is iterated. `close()` stops a generation early and
    returns once the model is free.
    """

    def __init__(self, pipeline: RagPipeline, question: str, history: Sequence[dict], *,
                 params: GenerationParams | None = None, top_k: int | None = None, mode: str | None = None,
                 answer_mode: str | None = None):
        self.pipeline = pipeline
        self.answer_mode = pipeline.resolve_answer_mode(answer_mode)
        self.quote: grounding.Quote | None = None
        self.choice: dict[str, Any] | None = None  # set when the question lists options (choices.py)
        self.short_answer = ""
        self.question = validate_question(question)
        self.params = params or pipeline.params
        self.top_k = top_k or pipeline.top_k
        self.mode = mode or pipeline.mode
        self.history, self.instructions = split_history(history)
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.prompt_tokens = 0
        self.finish_reason = "stop"
        t0 = time.perf_counter()
        # a pasted quiz item is searched as its stem and as its stem with the options, the two rankings fused
        # (Retriever.search_many): the options name the answer, but alone they pull in the wrong ones' passages
        self._choice = choices.parse_choice(self.question)
        self.query = pipeline.condense(self._choice.stem if self._choice else self.question, self.history)
        self.timings["condense"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self._choice:
            wordings = choices.search_wordings(self.query, self._choice.options)
            self.hits = pipeline.retriever.search_many(wordings, self.top_k, self.mode)
        else:
            self.hits = pipeline.retriever.search(self.query, self.top_k, self.mode)
        self.timings["retrieve"] = time.perf_counter() - t0
        self.abstained = pipeline.should_abstain(self.query, self.hits)
        self.used_hits: list[Hit] = []
        self.messages: list[dict] = []
        if not self.abstained:
            # Fitting needs only the tokenizer: a question that cannot fit fails here, before any queueing.
            self.used_hits, self.messages = pipeline.fit_prompt(self.question, self.hits, self.history,
                                                                params=self.params, instructions=self.instructions)
            if len(self.used_hits) < len(self.hits):
                self.notes.append(f"{len(self.hits) - len(self.used_hits)} lower-ranked passage(s) left out to fit "
                                  f"the model's context window")
            self.prompt_tokens = pipeline.generator.count_tokens(self.messages)
        self._pieces: list[str] = []
        self._done = False
        self._answer: Answer | None = None
        self._stream: Any = None
        self._cancelled = False
        self._cancel_event = threading.Event()  # what the model checks (rag.generation.base.cancel_scope)
        self._iter = self._run()

    @property
    def needs_model(self) -> bool:
        """Whether iterating will run the language model (False for an abstention)."""
        return not self.abstained

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        # All model work done for this answer happens inside next() calls, in this scope: cancel() reaches it.
        with cancel_scope(self._cancel_event):
            return next(self._iter)

    def close(self) -> None:
        """Stop generating (if started) and release the model; the answer keeps the text so far.

        Call it from the thread that iterates (a running generator cannot be closed from another thread).
        """
        self._iter.close()

    def cancel(self) -> None:
        """Ask the model to stop as soon as it can; safe from any thread, and before iteration starts.

        The in-process model stops within one decoder layer, whatever it is doing for this answer (reading
        the prompt, streaming, scoring quote candidates): a stream then ends early, other model calls raise
        GenerationCancelled out of the iteration. With other backends the iterating thread's `close()`
        stops it after the current piece.
        """
        self._cancelled = True
        self._cancel_event.set()
        stream = self._stream
        if stream is not None and hasattr(stream, "cancel"):
            stream.cancel()

    def _run(self) -> Iterator[str]:
        if self.abstained:
            self._pieces.append(prompts.ABSTAIN)
            self._done = True
            yield prompts.ABSTAIN
            return
        if self.answer_mode == "grounded":
            yield from self._run_grounded()
            return
        p = self.pipeline
        t0 = time.perf_counter()
        first = None
        budget = TokenBudget(p.generator.count_tokens, self.params.max_new_tokens)
        raw: list[str] = []
        # one token more than the budget: a model that would have gone on is seen to be cut (budget.py)
        stream = self._stream = p.generator.stream(self.messages, replace(self.params,
                                                                          max_new_tokens=budget.limit + 1))
        if self._cancelled and hasattr(stream, "cancel"):  # cancel() came before the stream existed
            stream.cancel()
        kept = (raw.append(piece) or piece for piece in stream)
        shown = grounding.readable(kept) if p.generator.prompt_format == "raft" else kept
        try:
            for piece in shown:
                if first is None:
                    first = time.perf_counter() - t0
                piece = budget.take(piece)
                if piece:
                    self._pieces.append(piece)
                    yield piece
                if budget.cut:
                    break
        finally:
            # Closed explicitly, in this thread: the backend's own cleanup (stop flag, join of its worker)
            # must not wait for the garbage collector, which may run it on the worker thread itself.
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        self.timings["first_token"] = first if first is not None else time.perf_counter() - t0
        self.timings["generate"] = time.perf_counter() - t0
        self._done = True
        if budget.cut or budget.over("".join(raw)):
            self.finish_reason = "length"

    def _run_grounded(self) -> Iterator[str]:
        """Quote first (chosen and verified), then the short answer generated after it."""
        p = self.pipeline
        t0 = time.perf_counter()
        texts = [h.chunk.text for h in self.used_hits]
        choice = self._choice
        about = self.question
        exclude = p.boilerplate()
        if choice is not None:  # a pasted quiz item: pick an option first, then quote what supports it
            exclude = exclude | choices.restated_options(texts, [*choice.options, choice.stem])  # no support, no quote
            picked = choices.pick_option(p.generator, self.messages, choice, texts, p.retriever.embedder,
                                         p.choice_retriever_weight, exclude)
            self.choice = {"label": ", ".join(choice.labels[i] for i in picked.chosen),
                           "option": "; ".join(choice.options[i] for i in picked.chosen), **picked.to_dict()}
            about = choices.claim(choice.stem, self.choice["option"])
            self.timings["choice"] = time.perf_counter() - t0
        quote = grounding.choose_quote(p.generator, self.messages, about, texts, p.retriever.embedder,
                                       weight=p.retriever_weight, exclude=exclude)
        self.timings["quote"] = time.perf_counter() - t0
        if (quote is None or not grounding.verify_quote(quote, texts[quote.passage - 1])) and self.choice:
            self.short_answer = f"{self.choice['label']}. {self.choice['option']}"
            self._pieces.append(self.short_answer)
            self._done = True
            yield self.short_answer
            return
        if quote is None or not grounding.verify_quote(quote, texts[quote.passage - 1]):
            self.notes.append("no sentence of the passages could be quoted; answering freely")
            self.answer_mode = "free"
            yield from self._run()
            return
        self.quote = quote
        head = f"\"{' '.join(quote.text.split())}\" [{quote.passage}]\n\n"
        self.timings["first_token"] = time.perf_counter() - t0
        self._pieces.append(head)
        yield head
        # max_new_tokens bounds what the model writes (the short answer), not the quote it copied (budget.py);
        # one token more than the request's limit, so a short answer that limit cuts is seen to be cut
        budget = TokenBudget(p.generator.count_tokens, self.params.max_new_tokens)
        params = replace(self.params, max_new_tokens=min(budget.limit + 1, SHORT_ANSWER_TOKENS),
                         stop=["\n", *self.params.stop])
        if self._cancelled:
            self._done = True
            return
        if self.choice is not None:  # the chosen option is the short answer: nothing left to generate
            short = f"{self.choice['label']}. {self.choice['option']}"
        elif "prefixes" in inspect.signature(p.generator.generate_batch).parameters:
            # the quote prefilled in the assistant's turn, RAFT style; one short line, so not streamed
            prefix = grounding.answer_prefix(self.question, quote.text, grounding.FINAL_MARKS[p.generator.prompt_format])
            short = p.generator.generate_batch([self.messages], params, prefixes=[prefix])[0]
        else:  # an HTTP model: the quote goes into the question
            msgs = prompts.grounded_messages(self.messages, quote.text)
            short = "".join(p.generator.stream(msgs, params))
        short = grounding.clean_short_answer(short)
        if self.choice is None:  # written by the model: the request's limit applies
            short = budget.take(short)
            self.finish_reason = "length" if budget.cut else "stop"
        if not short:
            short = " ".join(quote.text.split())
        self.short_answer = short
        self._pieces.append(short)
        yield short
        self.timings["generate"] = time.perf_counter() - t0
        self._done = True

    @property
    def completion_tokens(self) -> int:
        """Tokens of the answer given so far, a grounded quote included: the true count of what the client
        gets back (rag.answering.budget); 0 for an abstention: the model never ran."""
        if self.abstained or not self._pieces:
            return 0
        return self.pipeline.generator.count_tokens("".join(self._pieces))

    def text(self) -> str:
        """The whole raw answer (streams it to the end if needed)."""
        for _ in self:
            pass
        return "".join(self._pieces)

    def answer(self) -> Answer:
        """Final answer with markers cleaned and sources attributed sentence by sentence."""
        if self._answer is not None:
            return self._answer
        raw = self.text()
        p = self.pipeline
        if self.abstained:
            sources = [make_source(i, h, h.snippet[:200], cited=False) for i, h in enumerate(self.hits, start=1)]
            self._answer = Answer(self.question, self.query, raw, True, sources, self.hits,
                                  timings=self.timings, notes=self.notes, answer_mode=self.answer_mode)
            return self._answer
        hits = self.used_hits
        text = clean_markers(raw, len(hits)).strip()
        t0 = time.perf_counter()
        supports = attribute(text, hits, p.retriever.embedder)
        self.timings["attribute"] = time.perf_counter() - t0
        by_passage: dict[int, list[Support]] = {}
        for s in supports:
            by_passage.setdefault(s.passage, []).append(s)
        quote = self.quote
        cited, rest = [], []
        for n, h in enumerate(hits, start=1):  # every passage the model was given, the supporting ones first
            if quote is not None and n == quote.passage:
                cited.insert(0, make_source(n, h, quote.text, quote=quote))
            elif n in by_passage:
                cited.append(make_source(n, h, max(by_passage[n], key=lambda s: s.score).snippet))
            else:
                rest.append(make_source(n, h, h.snippet[:200], cited=False))
        if not cited:
            self.notes.append("no answer sentence could be matched to a passage; showing the passages retrieved")
        short = self.short_answer if self.answer_mode == "grounded" else text
        self._answer = Answer(self.question, self.query, text, False, cited + rest, self.hits, supports,
                              self.timings, self.notes, self.answer_mode, quote, short, self.choice)
        return self._answer



@dataclass(eq=False)
class RagPipeline:
    """Answers course questions from retrieved passages with a streaming generator.

    :param retriever: finds the passages.
    :param generator: writes the answer (its declared capabilities choose the answer mode for "auto").
    :param top_k: passages per question; `mode`: retrieval mode (None = the retriever's own).
    :param params: default generation settings; `ask()` takes per-call ones.
    :param abstain_threshold: below this dense cosine of the best passage, and with less than
        `abstain_coverage` of the question's words in the passages, answer "not in the course" without the model.
    :param max_context_tokens: prompt budget (None = the model's window).
    :param condense_mode: follow-up rewriting: "auto", "model", "heuristic" or "off".
    :param small_model: None = the generator's declaration.
    :param answer_mode: one of ANSWER_MODES.
    :param retriever_weight: the grounded mode's weight of the retriever in choosing the quote.
    :param choice_retriever_weight: the grounded mode's weight of the options' support in the passages against
        the model's scores, when a question lists options (rag.answering.choices).
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
        if self.answer_mode not in ANSWER_MODES:
            raise RagError(f"unknown answer mode {self.answer_mode!r}: use one of {', '.join(ANSWER_MODES)}")
        self.params = self.params or GenerationParams()
        if self.small_model is None:
            self.small_model = self.generator.small_model  # declared by the backend

    def boilerplate(self) -> frozenset[str]:
        """Sentences the course repeats across passages (grounding.boilerplate_sentences), never quoted;
        computed once per index generation (the retriever's passages of a new one are a new object)."""
        groups = self.retriever.passages()
        cached = self._boilerplate
        if cached is None or cached[0] is not groups:
            cached = self._boilerplate = (groups, grounding.boilerplate_sentences(g.text for g in groups.passages))
        return cached[1]

    def resolve_answer_mode(self, answer_mode: str | None = None) -> str:
        """"grounded" or "free" for one answer: the given mode, else the pipeline's; "auto" is grounded
        for in-process models and free for HTTP ones (which can use either).

        :raises RagError: for a mode not in ANSWER_MODES.
        """
        mode = answer_mode or self.answer_mode
        if mode not in ANSWER_MODES:
            raise RagError(f"unknown answer mode {mode!r}: use one of {', '.join(ANSWER_MODES)}")
        if mode == "auto":
            mode = "grounded" if self.generator.local else "free"
        return mode

    def should_abstain(self, query: str, hits: list[Hit]) -> bool:
        """Abstain when the best passage is far from the question (dense cosine) and the question's
        rarer words are not in the course either (the embedder misses jargon such as "PEFT")."""
        best = max((h.scores.get("dense", h.score) for h in hits), default=-1.0)
        if best >= self.abstain_threshold:
            return False
        return not hits or self.retriever.index.bm25.term_coverage(query) < self.abstain_coverage

    def ask(self, question: str, history: Sequence[dict] = (), *, params: GenerationParams | None = None,
            top_k: int | None = None, mode: str | None = None, answer_mode: str | None = None) -> Response:
        """Start answering `question`: everything but generation happens now, generation as the Response is iterated.

        Per-call settings apply to this answer only; the pipeline's own settings are never changed, so
        one pipeline can serve concurrent requests with different settings.

        :param question: the user's question (validated: non-empty text, at most MAX_QUESTION_CHARS).
        :param history: earlier messages, OpenAI style ({"role", "content"}); user/assistant turns are the
            conversation (follow-ups are condensed with them), system/developer texts are added to the
            system prompt as the caller's instructions.
        :param params: generation settings for this answer (default: the pipeline's `params`).
        :param top_k: passages to retrieve, 1..MAX_TOP_K (default: the pipeline's `top_k`).
        :param mode: retrieval mode, one of rag.retrieval.retriever.MODES (default: the pipeline's `mode`).
        :param answer_mode: "grounded", "free" or "auto" (default: the pipeline's `answer_mode`).
        :returns: a Response; `.abstained` is known already, iterate it for text pieces, `.answer()` for sources.
        :raises RagError: a bad question or setting, or a question whose best passage does not fit the
            model's window; GeneratorError for out-of-range generation settings.
        """
        if params is not None:
            params.validate()
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K):
            raise RagError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}")
        if mode is not None and mode not in MODES:
            raise RagError(f"unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}")
        self.resolve_answer_mode(answer_mode)
        return Response(self, question, history, params=params, top_k=top_k, mode=mode, answer_mode=answer_mode)

    def condense(self, question: str, history: Sequence[dict]) -> str:
        """A standalone retrieval query for a follow-up question, using the conversation so far."""
        previous = [m["content"] for m in history if m.get("role") == "user" and m.get("content")]
        if not previous or self.condense_mode == "off":
            return question
        mode = self.condense_mode
        if mode == "auto":
            mode = "concat" if self.small_model else "llm"
        if mode == "llm":
            try:
                q = self.generator.generate(prompts.condense_messages(question, history),
                                            GenerationParams(max_new_tokens=64, temperature=0.0))
                q = q.strip().splitlines()[0].strip() if q.strip() else ""
                if 3 <= len(q) <= 500:
                    return q
            except RagError:
                pass
        # A follow-up that leans on the conversation ("and how does it compare...") borrows the previous
        # question's words for retrieval; a self-contained question is searched as it is.
        if _FOLLOW_UP.search(question):
            return f"{previous[-1]} {question}"
        return question

    def fit_prompt(self, question: str, hits: list[Hit], history: Sequence[dict], *,
                   params: GenerationParams | None = None,
                   instructions: Sequence[str] = ()) -> tuple[list[Hit], list[dict]]:
        """Drop the lowest-ranked passages until prompt + answer fit the model's window (and passage budget).

        :param question: the (validated) question.
        :param hits: retrieved passages, best first.
        :param history: earlier user/assistant turns; the last 6 are kept, all dropped if they alone overflow.
        :param params: generation settings of this answer (its `max_new_tokens` is reserved in the window).
        :param instructions: the caller's system/developer texts, appended to the RAG system prompt.
        :returns: (the passages kept, best first; the chat messages for the generator).
        :raises RagError: when even the question and the best passage do not fit.
        """
        params = params or self.params
        window = self.generator.context_window - params.max_new_tokens
        budget = min(window, self.max_context_tokens) if self.max_context_tokens else window
        hist = list(history)[-6:]
        used = list(hits)

        def build(passages: list[Hit], turns: list[dict]) -> list[dict]:
            if self.generator.prompt_format == "raft":  # asked as it was tuned: <DOCUMENT> blocks, then the question
                return prompts.document_messages(question, [h.chunk.text for h in passages], turns,
                                                 system="\n\n".join(instructions) or None)
            messages = prompts.rag_messages(question, passages, self.small_model, turns)
            if instructions:
                extra = "\n\n".join(instructions)
                messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{extra}"}
            return messages

        while True:
            messages = build(used, hist)
            if self.generator.count_tokens(messages) <= budget or len(used) <= 1:
                break
            used = used[:-1]
        if self.generator.count_tokens(messages) > window and hist:
            hist = []
            messages = build(used, hist)
        if self.generator.count_tokens(messages) > window:
            raise RagError("the question and the best passage do not fit the model's context window: "
                           "ask a shorter question or lower --max-tokens")
        return used, messages
