"""The answering's stage boundaries, with real retrieval and a real HTTP model: the plan is made without asking
the model to answer, a grounded answer with nothing to quote hands over to the free mode, and the one stream
stops on cancel(). The model is the suite's fake OpenAI-compatible server on 127.0.0.1 (tests/fake_openai.py),
which records every request: no language model runs here, and what the model was asked is known exactly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import islice

import pytest

from rag.answering import grounding, prompts
from rag.answering.modes.grounded import NOTHING_TO_QUOTE, grounded_answer
from rag.answering.modes.result import Handover, ModeResult
from rag.api import make_pipeline
from rag.config import Settings
from rag.errors import GeneratorError
from rag.generation.base import GenerationParams, TextStream
from rag.generation.http import OpenAIGenerator
from tests.fake_openai import FakeServer, sse

LORA_Q = "What does LoRA freeze during fine-tuning?"
LORA_MC = f"{LORA_Q}\nA. The weights of the pre-trained model\nB. The tokenizer's vocabulary\nC. The learning rate"
OFF_TOPIC = "How do I bake sourdough bread at home?"
# a course whose passages hold no sentence to quote (fewer than 3 words a line), but do answer about LoRA
UNQUOTABLE = {"lora.txt": "LoRA adapters.\n\nRank four.\n", "heads.md": "# Adapters\n\n## LoRA rank\n\nSmall rank.\n"}


@pytest.fixture
def fake(module_fake_openai: FakeServer, keyless: None) -> FakeServer:
    model = module_fake_openai
    model.play(("reply", 200, "text/event-stream", sse("It ", "freezes ", "the weights.")))
    return model


def pipeline(settings: Settings, fake: FakeServer, **update: object):
    return make_pipeline(settings.model_copy(update=update), generator=OpenAIGenerator(fake.url, model_name="tiny"))


@pytest.fixture(scope="module")
def unquotable(tmp_path_factory, embedder) -> Settings:
    from rag.api import make_chunker
    from rag.index.build import build_index

    base = tmp_path_factory.mktemp("unquotable")
    corpus = base / "corpus"
    corpus.mkdir()
    for name, text in UNQUOTABLE.items():
        (corpus / name).write_text(text, encoding="utf-8")
    settings = Settings(index_dir=base / "index", corpus_dir=corpus, top_k=2)
    build_index(corpus, settings.index_dir, embedder, make_chunker(embedder, settings))
    return settings


# ---- the plan: everything before the answer, no model asked -------------------------------------------------

def test_a_plan_says_what_answers_without_asking_the_model(small_index, fake: FakeServer) -> None:
    pipe = pipeline(small_index, fake)
    plan = pipe.plan(LORA_Q)
    assert plan.needs_model and plan.mode == "free"  # an HTTP model: "auto" answers freely
    assert plan.used_hits and any("LoRA" in h.chunk.text for h in plan.used_hits)
    assert plan.passages == [h.chunk.text for h in plan.used_hits]
    assert plan.passages[0].strip() in plan.messages[-1]["content"]
    assert plan.prompt_tokens == pipe.generator.count_tokens(plan.messages) > 0
    assert set(plan.timings) == {"condense", "retrieve"}
    grounded = pipe.plan(LORA_MC, answer_mode="grounded")
    assert grounded.mode == "choice" and grounded.choice is not None and len(grounded.choice.options) == 3
    assert pipe.plan(LORA_Q, answer_mode="grounded").mode == "grounded"
    off = pipe.plan(OFF_TOPIC)
    assert off.abstained and not off.needs_model and off.mode == "abstain" and off.hits and not off.messages
    assert fake.requests == []  # four plans, not one request to the model


def test_a_follow_up_is_the_one_thing_a_plan_may_ask_a_large_model(small_index, fake: FakeServer) -> None:
    fake.play(("reply", 200, "text/event-stream", sse("What does LoRA freeze, compared with prompt tuning?")))
    pipe = pipeline(small_index, fake)  # an HTTP model is not declared small: follow-ups are condensed by it
    history = [{"role": "user", "content": LORA_Q}, {"role": "assistant", "content": "The weights."}]
    plan = pipe.plan("And how does it compare to prompt tuning?", history)
    assert plan.query == "What does LoRA freeze, compared with prompt tuning?"
    assert len(fake.requests) == 1 and fake.requests[0]["json"]["max_tokens"] == 64


def test_a_pasted_quiz_item_is_never_condensed_with_the_conversation(small_index, fake: FakeServer) -> None:
    pipe = pipeline(small_index, fake)
    history = [{"role": "user", "content": "What is prompt tuning?"}, {"role": "assistant", "content": "Soft prompts."}]
    item = "Which of these does LoRA freeze?\nA. The weights of the pre-trained model\nB. The tokenizer's vocabulary"
    plan = pipe.plan(item, history)
    assert plan.choice is not None and plan.query == "Which of these does LoRA freeze?"  # "these": its own options
    assert fake.requests == []  # the quiz item: no rewrite asked of the (large) model
    assert pipe.plan("And which of these does it freeze?", history).query != "And which of these does it freeze?"
    assert len(fake.requests) == 1  # a plain follow-up still is rewritten


# ---- the modes: a hand-over, capabilities as declared ---------------------------------------------------------

def test_the_grounded_mode_hands_over_before_any_piece_when_nothing_can_be_quoted(embedder, fake) -> None:
    gen = OpenAIGenerator(fake.url, model_name="tiny")
    run = grounded_answer(gen, [], LORA_Q, list(UNQUOTABLE.values()), embedder, params=GenerationParams())
    with pytest.raises(StopIteration) as stop:
        next(run)
    handover = stop.value.value
    assert isinstance(handover, Handover) and handover.note == NOTHING_TO_QUOTE and "quote" in handover.timings
    assert fake.requests == []  # choosing among no candidates asks no model


def test_the_pipeline_acts_on_the_hand_over_and_says_so(unquotable: Settings, fake: FakeServer) -> None:
    stream = pipeline(unquotable, fake).ask("What is LoRA?", answer_mode="grounded")
    assert stream.plan.mode == "grounded" and stream.answer_mode == "grounded"
    assert list(stream) == ["It ", "freezes ", "the weights."]  # the free mode's stream, as the model sent it
    ans = stream.answer()
    assert stream.answer_mode == ans.answer_mode == "free" and ans.quote is None
    assert ans.text == ans.short_answer == "It freezes the weights."
    assert ans.notes[0] == NOTHING_TO_QUOTE and list(ans.timings)[:3] == ["condense", "retrieve", "quote"]
    assert len(fake.requests) == 1 and fake.requests[0]["json"]["messages"] == stream.plan.messages


def test_a_model_that_cannot_continue_a_reply_gets_the_quote_in_its_question(small_index, fake) -> None:
    gen = OpenAIGenerator(fake.url, model_name="tiny")
    assert not gen.supports_prefixes  # declared: the grounded mode reads it, no signature is inspected
    with pytest.raises(GeneratorError, match="supports_prefixes"):
        gen.generate_batch([[{"role": "user", "content": "hi"}]], prefixes=["Short answer:"])
    stream = pipeline(small_index, fake).ask(LORA_Q, answer_mode="grounded")
    pieces = list(stream)
    ans = stream.answer()
    assert ans.quote is not None and pieces[0] == f"\"{' '.join(ans.quote.text.split())}\" [{ans.quote.passage}]\n\n"
    asked = fake.requests[-1]["json"]["messages"]
    assert asked[:-1] == stream.plan.messages[:-1]
    assert asked[-1]["content"] == prompts.grounded_messages(stream.plan.messages, ans.quote.text)[-1]["content"]
    assert ans.short_answer == "It freezes the weights." and ans.sources[0].quote is ans.quote
    assert grounding.verify_quote(ans.quote, ans.sources[0].text)


# ---- the stream: cancel() and close() declared on the base, for every backend ---------------------------------

def test_a_text_stream_ends_on_cancel_and_close_reaches_its_source() -> None:
    state = {"started": False, "closed": False}

    def source() -> Iterator[str]:
        state["started"] = True
        try:
            while True:
                yield "x"
        finally:
            state["closed"] = True

    before = TextStream(source())
    before.cancel()
    assert list(islice(before, 10)) == [] and not state["started"]  # cancelled before the first piece: never started
    during = TextStream(source())
    assert next(during) == "x" and state["started"]
    during.cancel()
    assert list(islice(during, 10)) == [] and not state["closed"]
    during.close()
    assert state["closed"]


def test_cancel_before_the_answer_starts_sends_nothing_to_the_model(small_index, fake: FakeServer) -> None:
    stream = pipeline(small_index, fake).ask(LORA_Q)
    stream.cancel()
    assert list(stream) == [] and stream.completion_tokens == 0 and fake.requests == []
    assert stream.answer().text == "" and stream.finish_reason == "stop"


def test_cancel_from_another_thread_ends_an_endless_answer(small_index, fake: FakeServer) -> None:
    fake.play(("endless", "more ", 0.0))
    stream = pipeline(small_index, fake, max_new_tokens=4096).ask(LORA_Q)
    given = []
    for piece in stream:
        given.append(piece)
        if len(given) == 3:
            canceller = threading.Thread(target=stream.cancel)
            canceller.start()
            canceller.join()
        assert len(given) < 1000, "cancel() did not end the stream"
    stream.close()
    assert given[:3] == ["more "] * 3 and stream.completion_tokens > 0
    assert stream.answer().text.startswith("more more more")
