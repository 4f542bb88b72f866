"""`rag serve` reports truncation as the OpenAI reference does, in every answer mode, streamed and
not, through the official `openai` client against a real server on 127.0.0.1 with the bundled model:
`finish_reason` is "length" when max_tokens cut what the model wrote (a free answer, a grounded answer's
short answer), and `usage.completion_tokens` is the true count of the answer that came back, a grounded quote
included. Before, a grounded answer came back with its whole quote (~31 tokens) under max_tokens 8, with
`finish_reason` "stop" and `completion_tokens` 8 (capped)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rag.server.served import ON_TOPIC, Served, msgs, start_server

pytestmark = pytest.mark.llm

CHOICE = ("What does LoRA freeze during fine-tuning?\nA. The weights of the pre-trained model\n"
          "B. The tokenizer's vocabulary\nC. The learning rate schedule")


@pytest.fixture(scope="module")
def grounded(course_index) -> Iterator[Served]:
    with start_server(course_index.index_dir, "--model", "bundled", env={"RAG_ANSWER_MODE": "grounded"}) as served:
        yield served


@pytest.fixture(scope="module")
def free(course_index) -> Iterator[Served]:
    with start_server(course_index.index_dir, "--model", "bundled") as served:
        yield served


def ask(served: Served, question: str, max_tokens: int) -> tuple[str, str, int, str, str, int]:
    """(content, finish_reason, completion_tokens) non-streamed, then the same streamed."""
    client = served.client()
    done = client.chat.completions.create(model="course-rag", messages=msgs(question), max_tokens=max_tokens)
    chunks = list(client.chat.completions.create(model="course-rag", messages=msgs(question), max_tokens=max_tokens,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    return (done.choices[0].message.content, done.choices[0].finish_reason, done.usage.completion_tokens,
            streamed, finish[0], chunks[-1].usage.completion_tokens)


def test_a_grounded_answer_cut_by_max_tokens_says_length_and_counts_its_quote(grounded: Served):
    content, finish, used, streamed, stream_finish, stream_used = ask(grounded, ON_TOPIC, 3)
    assert (finish, stream_finish) == ("length", "length")
    assert content.startswith('"') and streamed.strip() == content.strip()
    assert used >= len(content.split()) > 3 and stream_used == used  # the true count: quote + 3 tokens


def test_a_grounded_answer_within_max_tokens_says_stop(grounded: Served):
    content, finish, used, streamed, stream_finish, stream_used = ask(grounded, ON_TOPIC, 400)
    assert (finish, stream_finish) == ("stop", "stop")
    assert used >= len(content.split()) > 8 and stream_used == used


def test_a_chosen_option_is_counted_whole(grounded: Served):
    content, finish, used, streamed, stream_finish, stream_used = ask(grounded, CHOICE, 3)
    assert "A. The weights of the pre-trained model" in content  # chosen, not written: nothing to cut
    assert (finish, stream_finish) == ("stop", "stop")
    assert used >= len(content.split()) > 3 and stream_used == used


def test_a_free_answer_cut_by_max_tokens_says_length_with_the_true_count(free: Served):
    content, finish, used, streamed, stream_finish, stream_used = ask(free, ON_TOPIC, 3)
    assert (finish, stream_finish) == ("length", "length")
    assert 0 < used <= 3 and 0 < stream_used <= 3 and content.strip()
    assert len(content.split()) <= used
