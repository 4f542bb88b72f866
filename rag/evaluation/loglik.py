"""Log-likelihood of answer options as the start of a local chat model's reply, for multiple-choice scoring.

Works like lm-evaluation-harness's `loglikelihood` requests: the option's tokens are scored as the
continuation of the prompt, and options are compared by that sum divided by the option's length in
UTF-8 bytes (the harness's `acc_norm`). Bytes rather than tokens because a byte count does not depend
on the tokenizer, so scores stay comparable across models and with the harness; on the dev set with the
bundled model, per-token normalisation picked no more right answers and the raw sum fewer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rag.errors import GeneratorError, RagError
from rag.generation.base import Messages
from rag.generation.local import LocalGenerator


@dataclass
class OptionScore:
    """One option's summed token log-probability and the lengths it can be normalised by."""

    logprob: float
    n_tokens: int
    n_bytes: int

    @property
    def per_byte(self) -> float:
        """Length-normalised score (lm-eval's acc_norm): log-probability per UTF-8 byte of the option."""
        return self.logprob / max(1, self.n_bytes)

    @property
    def per_token(self) -> float:
        """Mean log-probability per option token."""
        return self.logprob / max(1, self.n_tokens)

    def to_dict(self) -> dict[str, Any]:
        """Rounded numbers for results.jsonl."""
        return {"logprob": round(self.logprob, 4), "n_tokens": self.n_tokens, "n_bytes": self.n_bytes,
                "per_byte": round(self.per_byte, 5)}


def supports_loglik(generator: Any) -> bool:
    """True when the backend exposes token probabilities (an in-process model); HTTP servers do not portably."""
    return bool(generator.supports_logprobs)  # declared by the backend (rag.generation.base.Generator)


def prompt_ids(generator: LocalGenerator, messages: Messages) -> list[int]:
    """Token ids of `messages` through the chat template, ending where the assistant's reply begins."""
    try:
        enc = generator.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    except Exception as e:
        raise GeneratorError(f"cannot apply the chat template of {generator.model_id}: {e}") from e
    return list(enc["input_ids"])


def option_scores(generator: LocalGenerator, messages: Messages, options: list[str]) -> list[OptionScore]:
    """Score every option as the beginning of the assistant's reply to `messages`.

    One pass over the prompt, shared by all options (LocalGenerator.continuation_logprobs).
    """
    if not options:
        raise RagError("no options to score")
    if not supports_loglik(generator):
        raise GeneratorError(f"{generator!r} gives no token log-probabilities: option scoring needs a local model")
    for text in options:
        if not generator.tokenizer(text, add_special_tokens=False)["input_ids"]:
            raise RagError(f"option {text!r} is empty: every option needs some text")
    # Each option is encoded on its own, as the harness does: the chat template ends with a newline, so the
    # reply starts on a token boundary and this matches how the model would write it.
    sums = generator.continuation_logprobs(messages, "", options)
    return [OptionScore(total, n, len(text.encode("utf-8"))) for (total, n), text in zip(sums, options)]
