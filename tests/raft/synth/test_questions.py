"""The question parser is linear in the reply's length (issue 31): a teacher that ignores max_tokens and
writes 200 KB on one line without a question mark took 111 s to parse."""

from __future__ import annotations

import time

import pytest

from raft.synth.questions import parse_questions, select_questions


@pytest.mark.parametrize("reply", [
    "word " * 40_000,  # 200 KB, one line, no "?"
    "1. What is LoRA? " + "word " * 40_000,  # a question, then a long tail without "?"
    "- " + "a" * 200_000,  # one endless token after a list marker
    ("What is LoRA? " + "x " * 500 + "\n") * 200,  # many long lines
    "?" * 200_000,
    "Sure. " * 40_000 + "What is LoRA?",
])
def test_parsing_a_long_reply_takes_linear_time(reply: str) -> None:
    started = time.perf_counter()
    select_questions(reply, 3)
    assert time.perf_counter() - started < 2.0


def test_the_linear_parser_splits_as_before() -> None:
    assert parse_questions("Sure! What is X? And why is Y?  trailing words") == ["What is X?", "And why is Y?"]
    assert parse_questions("1. What does LoRA\nfreeze during training?") == ["What does LoRA freeze during training?"]
    assert parse_questions("no question here\n2) How? ") == ["How?"]
