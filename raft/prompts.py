"""Prompt templates of RAFT data generation, in one place: questions about a chunk, CoT answers quoting it.

Each prompt has a full variant (capable instruction-following teachers behind an HTTP server) and a
short variant for small local models (SmolLM2-135M follows one short, concrete instruction better).
"""

from __future__ import annotations

import re

from rag.answering.prompts import document_block  # the one definition of the <DOCUMENT> format

BEGIN_QUOTE = "##begin_quote##"
END_QUOTE = "##end_quote##"
ANSWER_MARK = "<ANSWER>:"
QUOTE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)  # group 1: the quote

QUESTIONS_SYSTEM = (
    "You write exam questions for students of a course. Given a passage of the course documents, write "
    "questions that the passage answers. Each question must stand on its own: never mention 'the passage', "
    "'the text', 'the document' or 'the author'. Each question must end with a question mark. Reply with "
    "the questions only, one per line, numbered 1., 2., 3., with no answers and no other text."
)
QUESTIONS_USER = "Passage:\n{chunk}\n\nWrite {n} different questions that this passage answers."

QUESTIONS_SYSTEM_SMALL = "You write short quiz questions. Reply with questions only, one per line."
QUESTIONS_USER_SMALL = "{chunk}\n\nWrite {n} questions about the facts above, numbered 1., 2., 3."

ANSWER_SYSTEM = (
    "You answer a question using only the given context. First explain your reasoning step by step. "
    f"Whenever you use a sentence of the context, copy it word for word between {BEGIN_QUOTE} and "
    f"{END_QUOTE}. End with a line `{ANSWER_MARK} ` followed by a short final answer."
)
ANSWER_USER = "Context:\n{context}\n\nQuestion: {question}"

ANSWER_SYSTEM_SMALL = (
    f"Answer from the context. Copy the sentence that answers it between {BEGIN_QUOTE} and {END_QUOTE}. "
    f"Then write {ANSWER_MARK} and a short answer."
)
ANSWER_USER_SMALL = "Context:\n{context}\n\nQuestion: {question}\n\n{begin}"


def question_messages(chunk: str, n: int, small: bool = False) -> list[dict]:
    """Chat messages asking for `n` questions that `chunk` answers."""
    system, user = (QUESTIONS_SYSTEM_SMALL, QUESTIONS_USER_SMALL) if small else (QUESTIONS_SYSTEM, QUESTIONS_USER)
    return [{"role": "system", "content": system},
            {"role": "user", "content": user.format(chunk=chunk.strip(), n=n)}]


def answer_messages(question: str, context: str, small: bool = False) -> list[dict]:
    """Chat messages asking for a chain-of-thought answer to `question` that quotes `context`."""
    if small:
        return [{"role": "system", "content": ANSWER_SYSTEM_SMALL},
                {"role": "user", "content": ANSWER_USER_SMALL.format(
                    context=context.strip(), question=question.strip(), begin="Reasoning:")}]
    return [{"role": "system", "content": ANSWER_SYSTEM},
            {"role": "user", "content": ANSWER_USER.format(context=context.strip(), question=question.strip())}]


def instruction(texts: list[str], question: str) -> str:
    """The student's prompt: the documents, then the question (RAFT reference format)."""
    return document_block(texts) + question


STUDENT_SYSTEM = None  # the exported chat format has no system prompt unless the user adds one


def student_messages(texts: list[str], question: str, system: str | None = STUDENT_SYSTEM) -> list[dict]:
    """The fine-tuned model's conversation: documents + question in, CoT answer out (train and eval share it).

    No documents = closed book: the question alone.
    """
    user = instruction(texts, question) if texts else question
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def is_small_model(generator) -> bool:
    """Small models get the short prompts, capable ones (HTTP teachers) the full ones: the backend's declared
    `small_model` (rag.generation.base.Generator; True for the in-process models)."""
    return bool(generator.small_model)
