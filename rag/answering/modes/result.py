"""What a mode of answering returns when its pieces are all given: its result (with the option chosen, for a
question that lists options), or a hand-over to another mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rag.answering.choices import Picked
from rag.answering.grounding import Quote


@dataclass(frozen=True)
class ChosenOption:
    """The option(s) chosen for a multiple-choice question (several for "select all that apply").

    :param labels: their labels as the student wrote them ("A", or "1" for an unlabelled option).
    :param options: their texts, in the question's order.
    :param picked: the choice and its scores (choices.pick_option).
    """

    labels: tuple[str, ...]
    options: tuple[str, ...]
    picked: Picked

    @property
    def label(self) -> str:
        """The chosen labels, comma-separated ("B", or "A, C")."""
        return ", ".join(self.labels)

    @property
    def option(self) -> str:
        """The chosen options' texts, semicolon-separated."""
        return "; ".join(self.options)

    @property
    def index(self) -> int:
        """The first chosen option's position in the question, 0-based."""
        return self.picked.index

    @property
    def text(self) -> str:
        """The choice as the answer states it: "A. <option>" (several: "A. <option>; C. <option>")."""
        return "; ".join(f"{label}. {option}" for label, option in zip(self.labels, self.options))

    def to_dict(self) -> dict[str, Any]:
        """JSON form: label, option, then the choice's indexes, rule and scores (Picked.to_dict)."""
        return {"label": self.label, "option": self.option, **self.picked.to_dict()}


@dataclass
class ModeResult:
    """How a mode answered, besides its text.

    :param answer_mode: "grounded" or "free": the mode reported with the answer.
    :param finish_reason: "length" when the request's max_new_tokens cut what the model wrote, else "stop".
    :param quote: the verified supporting sentence (grounded and choice modes), if one was quoted.
    :param short_answer: the answer after the quote (grounded and choice modes); "" in free mode.
    :param choice: the option chosen, when the question listed options (choice mode).
    :param timings: seconds per step, in the order they happened ("choice", "quote", "first_token", "generate").
    :param notes: what the user should know about how it was answered.
    """

    answer_mode: str
    finish_reason: str = "stop"
    quote: Quote | None = None
    short_answer: str = ""
    choice: ChosenOption | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Handover:
    """The grounded mode gives the answer to the free mode before it has given any piece (no sentence of the
    passages can be quoted); `run_mode` acts on it.

    :param note: why, for the answer's notes.
    :param timings: seconds the grounded mode spent.
    """

    note: str
    timings: dict[str, float] = field(default_factory=dict)
