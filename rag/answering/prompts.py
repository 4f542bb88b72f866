"""Prompt templates of the RAG loop, in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type here: raft/prompts.py imports the document format without the retriever
    from rag.retrieval.retriever import Hit

SYSTEM = (
    "You are a teaching assistant for a course. Answer the student's question using only the numbered "
    "course passages you are given. Cite the passages you use with their numbers in square brackets, "
    "like [1] or [2]. If the passages do not contain the answer, say that the course documents do not "
    "cover it. Be concise and accurate."
)

# Small local models follow short, concrete instructions better.
SYSTEM_SMALL = (
    "Answer the question using only the passages below. Cite passage numbers like [1]. "
    "If the answer is not in the passages, say so."
)

CONDENSE = (
    "Rewrite the follow-up question as one standalone question that can be understood without the "
    "conversation. Reply with the question only.\n\nConversation:\n{history}\n\nFollow-up question: "
    "{question}\n\nStandalone question:"
)

ABSTAIN = "The course documents do not seem to cover this. The nearest passages are listed below."


def passage_header(n: int, hit: Hit) -> str:
    where = hit.chunk.source + (f" > {hit.chunk.section}" if hit.chunk.section else "")
    return f"[{n}] ({where})"


def format_passages(hits: Sequence[Hit]) -> str:
    return "\n\n".join(f"{passage_header(i, h)}\n{h.chunk.text.strip()}" for i, h in enumerate(hits, start=1))


def rag_messages(question: str, hits: Sequence[Hit], small_model: bool = False,
                 history: Sequence[dict] = ()) -> list[dict]:
    """Chat messages: instructions, the earlier turns, then numbered passages and the question."""
    user = f"Course passages:\n\n{format_passages(hits)}\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": SYSTEM_SMALL if small_model else SYSTEM}, *history,
            {"role": "user", "content": user}]


# The RAFT student format (Zhang et al. 2024, the reference's `<DOCUMENT>` blocks): the conversation `raft train`
# fine-tunes on and `raft eval` asks in. A model tuned on it declares prompt_format "raft" (rag.generation.base),
# and the pipeline then asks it the same way (raft/prompts.py builds its training prompts from these).
DOCUMENT_OPEN, DOCUMENT_CLOSE = "<DOCUMENT>", "</DOCUMENT>"


def document_block(texts: Sequence[str]) -> str:
    """The documents, each wrapped in <DOCUMENT>...</DOCUMENT> and followed by a newline (RAFT reference format)."""
    return "".join(f"{DOCUMENT_OPEN}{t}{DOCUMENT_CLOSE}\n" for t in texts)


def document_messages(question: str, texts: Sequence[str], history: Sequence[dict] = (),
                      system: str | None = None) -> list[dict]:
    """Chat messages in the RAFT student format: [system], the earlier turns, then documents + question.

    :param question: the question, written right after the last document (no label, as in training).
    :param texts: the passage texts, best first; none = the question alone (closed book).
    :param history: earlier {"role", "content"} turns.
    :param system: a system prompt (the caller's instructions); None = none, as `raft train` trains without one.
    """
    user = document_block(texts) + question.strip() if texts else question.strip()
    return [*([{"role": "system", "content": system}] if system else []), *history, {"role": "user", "content": user}]


def condense_messages(question: str, history: Sequence[dict]) -> list[dict]:
    convo = "\n".join(f"{m['role']}: {m['content'].strip()[:500]}" for m in history[-6:])
    return [{"role": "user", "content": CONDENSE.format(history=convo, question=question.strip())}]


GROUNDED_HINT = ("The sentence that answers it, quoted from the passages: \"{quote}\"\n"
                 "Answer the question in one short sentence.")


def grounded_messages(messages: list[dict], quote: str) -> list[dict]:
    """`messages` (from `rag_messages`) with the chosen quote added to the last user turn: the grounded
    mode's prompt for a model whose reply cannot be prefilled (an HTTP server)."""
    last = messages[-1]
    hint = GROUNDED_HINT.format(quote=" ".join(quote.split()))
    return [*messages[:-1], {**last, "content": f"{last['content']}\n\n{hint}"}]
