"""TokenBudget: an answer cut at max_tokens as the reference reports it, counted in linear time."""

from __future__ import annotations

import pytest

from rag.answering.budget import TokenBudget


@pytest.fixture(scope="module")
def count():
    from transformers import AutoTokenizer

    from rag.index.embeddings import bundled_model_path

    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def counted(count):
    read = [0]  # characters the counter was given, in all

    def f(text: str) -> int:
        read[0] += len(text)
        return count(text)

    return f, read


def test_an_answer_under_the_limit_is_taken_whole_with_few_counts(count) -> None:
    pieces = [f" word{i % 7} and more," for i in range(2000)]
    f, read = counted(count)
    budget = TokenBudget(f, 100_000)
    assert "".join(budget.take(p) for p in pieces) == "".join(pieces)
    assert not budget.cut
    # each piece is counted about once: linear, not the whole text again for every piece (quadratic)
    assert read[0] <= 2 * len("".join(pieces))
    assert count(budget.text) <= budget.used  # used bounds the true count from above


def test_the_answer_is_cut_at_its_longest_prefix_that_fits(count) -> None:
    pieces = ["Low-rank adaptation", " freezes the pre-trained", " weights and trains", " two small matrices."] * 5
    budget = TokenBudget(count, 12)
    shown = "".join(budget.take(p) for p in pieces)
    assert budget.cut and shown == budget.text
    full = "".join(pieces)
    assert full.startswith(shown) and count(shown) <= 12 < count(full[:len(shown) + 1])
    assert budget.take(" more") == ""
