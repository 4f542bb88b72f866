"""models.ModelLock: an answer's prompt reads the model before waiting quote scoring, first come first
served within a priority, and a timed-out waiter gives up its place."""

from __future__ import annotations

import threading
import time

import pytest

from rag.generation.models import ModelLock


def _waiter(lock: ModelLock, name: str, priority: int, order: list[str]) -> threading.Thread:
    def work() -> None:
        assert lock.acquire(timeout=10, priority=priority)
        order.append(name)
        lock.release()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def _queued(lock: ModelLock, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(lock._waiting) < n:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_an_answer_goes_before_waiting_scoring_and_ties_keep_arrival_order() -> None:
    lock, order = ModelLock(), []
    assert lock.acquire()
    threads = []
    for i, (name, priority) in enumerate([("score-1", 1), ("score-2", 1), ("answer-1", 0), ("answer-2", 0)]):
        threads.append(_waiter(lock, name, priority, order))
        _queued(lock, i + 1)
    lock.release()
    for t in threads:
        t.join(10)
    assert order == ["answer-1", "answer-2", "score-1", "score-2"]


def test_timeouts_and_non_blocking_tries_give_up_their_place() -> None:
    lock = ModelLock()
    with lock:
        assert not lock.acquire(blocking=False)
        t0 = time.monotonic()
        assert not lock.acquire(timeout=0.05, priority=0)
        assert time.monotonic() - t0 >= 0.05 and lock._waiting == []
    assert lock.acquire(blocking=False)  # free again, nobody left waiting
    lock.release()
    with pytest.raises(RuntimeError, match="unlocked"):
        lock.release()
