"""Prompt templates of the RAG loop, in one place."""

from __future__ import annotations

from collections.abc import Sequence

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
