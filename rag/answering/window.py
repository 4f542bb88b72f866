"""The prompt fitted to the model's context window: the lowest-ranked passages, then the conversation, go first."""

from __future__ import annotations

from collections.abc import Sequence

from rag.answering import prompts
from rag.errors import RagError
from rag.generation.base import GenerationParams, Generator, Messages
from rag.retrieval.retriever import Hit

MAX_HISTORY_TURNS = 6  # earlier turns kept in the prompt (the most recent)


def build_messages(question: str, passages: Sequence[Hit], turns: Sequence[dict], generator: Generator, *,
                   small_model: bool = False, instructions: Sequence[str] = ()) -> Messages:
    """The chat messages asking `question` about `passages`, as the model was tuned to be asked.

    :param question: the (validated) question.
    :param passages: the passages to show, best first (numbered 1.. in the prompt).
    :param turns: earlier user/assistant turns.
    :param generator: its declared `prompt_format` chooses the format: "raft" (`<DOCUMENT>` blocks, then the
        question) or "chat" (numbered passages with their file and heading).
    :param small_model: the chat format's short system prompt.
    :param instructions: the caller's system/developer texts, appended to the system prompt.
    :returns: OpenAI-style messages.
    """
    if generator.prompt_format == "raft":  # asked as it was tuned: <DOCUMENT> blocks, then the question
        return prompts.document_messages(question, [h.chunk.text for h in passages], turns,
                                         system="\n\n".join(instructions) or None)
    messages = prompts.rag_messages(question, passages, small_model, turns)
    if instructions:
        extra = "\n\n".join(instructions)
        messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{extra}"}
    return messages


def fit_prompt(question: str, hits: Sequence[Hit], history: Sequence[dict], generator: Generator, *,
               params: GenerationParams, max_context_tokens: int | None = None, small_model: bool = False,
               instructions: Sequence[str] = ()) -> tuple[list[Hit], Messages]:
    """Drop the lowest-ranked passages until prompt + answer fit the model's window (and passage budget).

    Needs only the tokenizer (`generator.count_tokens`), never the model.

    :param question: the (validated) question.
    :param hits: retrieved passages, best first.
    :param history: earlier user/assistant turns; the last MAX_HISTORY_TURNS are kept, all dropped if they
        alone overflow the window.
    :param generator: the model asked (its `context_window`, `count_tokens`, `prompt_format`).
    :param params: generation settings of this answer (its `max_new_tokens` is reserved in the window).
    :param max_context_tokens: prompt budget in tokens (None = the model's window).
    :param small_model: the chat format's short system prompt.
    :param instructions: the caller's system/developer texts, appended to the RAG system prompt.
    :returns: (the passages kept, best first; the chat messages for the generator).
    :raises RagError: when even the question and the best passage do not fit.
    """
    window = generator.context_window - params.max_new_tokens
    budget = min(window, max_context_tokens) if max_context_tokens else window
    turns = list(history)[-MAX_HISTORY_TURNS:]
    used = list(hits)

    def build(passages: list[Hit], kept: list[dict]) -> Messages:
        return build_messages(question, passages, kept, generator, small_model=small_model,
                              instructions=instructions)

    while True:
        messages = build(used, turns)
        if generator.count_tokens(messages) <= budget or len(used) <= 1:
            break
        used = used[:-1]
    if generator.count_tokens(messages) > window and turns:
        turns = []
        messages = build(used, turns)
    if generator.count_tokens(messages) > window:
        raise RagError("the question and the best passage do not fit the model's context window: "
                       "ask a shorter question or lower --max-tokens")
    return used, messages
