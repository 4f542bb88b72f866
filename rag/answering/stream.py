"""The one stream of an answer: the pieces of the plan's mode as they come, then the final Answer.

The server, the CLI and the app read only this and its `plan`: iterate for text pieces (the model runs only
while the stream is iterated), `answer()` for the Answer with its sources, `cancel()` from any thread and
`close()` from the iterating one to stop the model (declared on rag.generation.base.TextStream).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Generator as Pieces

from rag.answering.answer import Answer
from rag.answering.finalize import AnswerBuilder
from rag.answering.modes.result import ModeResult
from rag.answering.plan import Plan
from rag.generation.base import TextStream, cancel_scope


class AnswerStream(TextStream):
    """One answer in progress.

    All model work for the answer runs inside `next()` calls, in a `cancel_scope` of the stream's own event, so
    `cancel()` reaches it wherever it is: the in-process model stops within one decoder layer (reading the
    prompt, streaming, scoring quote candidates); a stream then ends early, other model calls raise
    GenerationCancelled out of the iteration. An HTTP model stops before its next piece.

    :param plan: the planned answer (rag.answering.plan).
    :param pieces: the mode stage's pieces, returning its ModeResult (rag.answering.modes.run.run_mode).
    :param builder: the finalize stage.
    :param count_tokens: the generator's token count (`completion_tokens`).
    """

    def __init__(self, plan: Plan, pieces: Pieces[str, None, ModeResult], builder: AnswerBuilder,
                 count_tokens: Callable[[str], int]) -> None:
        super().__init__(self._record(pieces))
        self._scope = None  # the stream's own event is the scope its model work runs in
        self.plan = plan
        #: seconds per step: the plan's, what the caller adds (e.g. "queue_wait"), then the mode's
        self.timings: dict[str, float] = dict(plan.timings)
        self.notes: list[str] = list(plan.notes)
        #: the mode's result, once it has given its last piece
        self.result: ModeResult | None = None
        self._builder = builder
        self._count_tokens = count_tokens
        self._given: list[str] = []
        self._answer: Answer | None = None

    def _record(self, pieces: Pieces[str, None, ModeResult]) -> Pieces[str, None, None]:
        result = yield from pieces
        self.timings.update(result.timings)
        self.notes.extend(result.notes)
        self.result = result

    def __next__(self) -> str:
        with cancel_scope(self._cancel):
            piece = next(self._pieces)
        self._given.append(piece)
        return piece

    @property
    def answer_mode(self) -> str:
        """"grounded" or "free": the plan's, until a mode answered otherwise (a hand-over)."""
        return self.result.answer_mode if self.result is not None else self.plan.answer_mode

    @property
    def finish_reason(self) -> str:
        """"length" when max_new_tokens cut what the model wrote, else "stop" (OpenAI's finish_reason)."""
        return self.result.finish_reason if self.result is not None else "stop"

    @property
    def completion_tokens(self) -> int:
        """Tokens of the answer given so far, a grounded quote included: the true count of what the client
        gets back (rag.answering.budget); 0 for an abstention: the model never ran."""
        if self.plan.abstained or not self._given:
            return 0
        return self._count_tokens("".join(self._given))

    def text(self) -> str:
        """The whole raw answer (streams it to the end if needed)."""
        for _ in self:
            pass
        return "".join(self._given)

    def answer(self) -> Answer:
        """The final Answer: markers cleaned, sources attributed sentence by sentence (streams to the end if
        needed). After `close()` mid-answer: the text given so far."""
        if self._answer is None:
            raw = self.text()
            self._answer = self._builder.build(self.plan, self.result, raw, timings=self.timings, notes=self.notes)
        return self._answer
