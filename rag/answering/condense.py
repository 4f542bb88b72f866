"""A follow-up question made standalone for retrieval, from the conversation so far (the plan stage's condensing).

"And how does it compare to prompt tuning?" finds nothing by itself: retrieval needs the subject of the
earlier question. A large model rewrites the follow-up ("llm"); a small one cannot do that reliably, so the
follow-up borrows the previous question's words ("concat") when it leans on the conversation (a pronoun,
"and", "what about"), and a self-contained question is searched as it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.answering import prompts
from rag.errors import RagError
from rag.generation.base import GenerationParams, Generator

CONDENSE_MODES = ("auto", "llm", "concat", "off")  # auto: concat for small models, llm for the others
_FOLLOW_UP = re.compile(r"^\s*(and|also|but|so|what about|how about)\b|\b(it|its|they|them|their|this|that|these|those|"
                        r"he|she|the same|the other|the former|the latter)\b", re.IGNORECASE)


def condense(question: str, history: Sequence[dict], generator: Generator, *, mode: str = "auto",
             small_model: bool = False) -> str:
    """A standalone retrieval query for `question`, using the conversation's earlier user turns.

    :param question: the (validated) question.
    :param history: earlier {"role", "content"} turns, oldest first.
    :param generator: the model that rewrites the follow-up in "llm" mode (one call of at most 64 tokens);
        not called in the other modes.
    :param mode: one of CONDENSE_MODES.
    :param small_model: with mode "auto": concatenate (True) or ask the model (False).
    :returns: the query; `question` itself without earlier user turns, with mode "off", or for a
        self-contained question when the model is not asked or gives nothing usable.
    """
    previous = [m["content"] for m in history if m.get("role") == "user" and m.get("content")]
    if not previous or mode == "off":
        return question
    if mode == "auto":
        mode = "concat" if small_model else "llm"
    if mode == "llm":
        try:
            q = generator.generate(prompts.condense_messages(question, history),
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
