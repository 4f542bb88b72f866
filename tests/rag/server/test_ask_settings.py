"""The per-call settings of RagPipeline.ask() that `rag serve` relies on: settings per request that leave the
pipeline alone, the no-model work done up front, long turns clipped, and cancel() stopping the model at once
from any point (the in-process side of the server's queue and disconnect tests)."""

from __future__ import annotations

import pytest

from rag.answering.plan import MAX_TURN_CHARS
from rag.api import make_pipeline
from rag.errors import RagError
from rag.generation.base import GenerationCancelled, GenerationParams
from tests.rag.server.served import OFF_TOPIC, ON_TOPIC


@pytest.fixture(scope="module")
def pipe(course_index):
    return make_pipeline(course_index.model_copy(update={"max_new_tokens": 12, "top_k": 3, "answer_mode": "free"}))


@pytest.mark.llm
def test_ask_takes_per_call_settings_and_leaves_the_pipeline_alone(pipe):
    before = (pipe.params, pipe.top_k, pipe.mode)
    resp = pipe.ask(ON_TOPIC, params=GenerationParams(max_new_tokens=2), top_k=2, mode="bm25")
    assert [h.chunk.id for h in resp.plan.hits] == [h.chunk.id for h in pipe.retriever.search(ON_TOPIC, 2, "bm25")]
    assert resp.text().strip() and pipe.generator.count_tokens(resp.text()) <= 3 and resp.finish_reason == "length"
    assert (pipe.params, pipe.top_k, pipe.mode) == before
    assert len(pipe.ask(OFF_TOPIC).plan.hits) == 3  # the pipeline's own defaults still apply
    for bad in ({"top_k": 0}, {"top_k": 101}, {"mode": "semantic"}):
        with pytest.raises(RagError):
            pipe.ask(ON_TOPIC, **bad)
    with pytest.raises(RagError, match=r"invalid generation setting: top_p must be in \(0.0, 1.0\], got 0"):
        GenerationParams(top_p=0)  # refused when made, before any question


@pytest.mark.llm
def test_ask_does_the_no_model_work_up_front_and_clips_long_turns(pipe):
    history = [{"role": "user", "content": "LoRA " * 400_000}, {"role": "assistant", "content": "..."},
               {"role": "system", "content": "Answer in French."}]
    resp = pipe.ask("And what does it freeze?", history, params=GenerationParams(max_new_tokens=1))
    plan = resp.plan
    assert plan.needs_model and plan.prompt_tokens > 0 and plan.messages  # prompt fitted before generation
    assert all(len(m["content"]) <= MAX_TURN_CHARS + 1 for m in plan.history)
    assert "Answer in French." in plan.messages[0]["content"] and plan.messages[0]["role"] == "system"
    assert resp.completion_tokens == 0  # nothing generated until iterated
    resp.close()  # never started: closing is safe and leaves the model free
    assert not pipe.ask(OFF_TOPIC).plan.needs_model


@pytest.mark.llm
def test_cancel_stops_the_model_at_once_from_any_point(pipe):
    before = pipe.ask(ON_TOPIC, params=GenerationParams(max_new_tokens=400))
    before.cancel()  # before iteration: the model stops at its first layer, nothing is generated
    assert list(before) == [] and before.completion_tokens == 0
    during = pipe.ask(ON_TOPIC, params=GenerationParams(max_new_tokens=400))
    first = next(during)
    during.cancel()  # thread-safe; here from the iterating thread itself
    rest = list(during)
    assert first and pipe.generator.count_tokens(first + "".join(rest)) < 40
    after = pipe.ask(ON_TOPIC, params=GenerationParams(max_new_tokens=3))
    assert after.text().strip()  # the model is free for the next answer


@pytest.mark.llm
def test_cancel_reaches_a_grounded_answers_quote_scoring(course_index, pipe):
    grounded = make_pipeline(course_index.model_copy(update={"answer_mode": "grounded", "max_new_tokens": 4}),
                             retriever=pipe.retriever, generator=pipe.generator)
    resp = grounded.ask(ON_TOPIC)
    assert resp.answer_mode == "grounded"
    resp.cancel()  # the quote is chosen with the model's log-probabilities: that forward pass is abandoned
    with pytest.raises(GenerationCancelled):
        list(resp)
    assert grounded.ask(ON_TOPIC).text().strip()  # and the model is free for the next answer
