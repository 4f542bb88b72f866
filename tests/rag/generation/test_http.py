"""Limits of a call to an OpenAI-compatible server (issue 31), against the suite's fake server on 127.0.0.1
misbehaving on purpose: a reply that never ends is cut at `max_reply_bytes` of text; a server that accepts
and never answers, or trickles forever, is given up at the call's `deadline` (retries included), whatever
the read timeout; bytes that are not UTF-8 are a rejected reply with its reason, streamed or not, never
U+FFFD in the text nor a UnicodeDecodeError traceback. Each is a one-line GeneratorError (BadReply for a
reply that arrived but cannot be used)."""

from __future__ import annotations

import json
import time

import pytest

from rag.errors import BadReply, GeneratorError, RagError
from rag.generation.http import OpenAIGenerator
from tests.fake_openai import FakeServer, sse

QUESTION = [{"role": "user", "content": "What does LoRA freeze?"}]


@pytest.fixture
def server(fake_openai: FakeServer, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    monkeypatch.delenv("RAG_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return fake_openai


def test_an_endless_stream_is_cut_at_the_byte_cap(server: FakeServer) -> None:
    server.play(("endless", "la " * 100, 0))
    client = OpenAIGenerator(server.url, max_reply_bytes=4096, read_timeout=5, deadline=30)
    started = time.monotonic()
    with pytest.raises(BadReply) as info:
        client.generate(QUESTION)
    assert time.monotonic() - started < 10
    assert info.value.reason == "reply_too_long"
    message = str(info.value)
    assert "\n" not in message and server.url in message and "4096 bytes" in message
    assert "model_max_reply_bytes" in message


def test_a_server_that_never_answers_is_given_up_at_the_deadline(server: FakeServer) -> None:
    server.play(("hang",))
    client = OpenAIGenerator(server.url, read_timeout=60, deadline=1.5, retries=3)
    started = time.monotonic()
    with pytest.raises(GeneratorError) as info:
        client.generate(QUESTION)
    took = time.monotonic() - started
    assert 1.0 < took < 4.0, took  # not 3 x 60 s
    assert "\n" not in str(info.value) and "1.5 s" in str(info.value) and "model_deadline" in str(info.value)


def test_the_read_timeout_applies_to_each_try_and_the_deadline_to_all(server: FakeServer) -> None:
    server.play(("hang",))
    client = OpenAIGenerator(server.url, read_timeout=0.5, deadline=30, retries=2)
    started = time.monotonic()
    with pytest.raises(GeneratorError, match=r"sent nothing for 0.5 s.*model_timeout"):
        client.generate(QUESTION)
    assert time.monotonic() - started < 5
    assert len(server.requests) == 2  # a timeout before the reply started is retried


def test_a_trickling_endless_stream_ends_at_the_deadline(server: FakeServer) -> None:
    server.play(("endless", "x", 0.05))  # small pieces, never the byte cap in time
    client = OpenAIGenerator(server.url, read_timeout=5, deadline=1.0, max_reply_bytes=1 << 20)
    started = time.monotonic()
    received = []
    with pytest.raises(GeneratorError, match="deadline of 1 s") as info:
        for piece in client.stream(QUESTION):
            received.append(piece)
    assert not isinstance(info.value, BadReply)
    assert received and time.monotonic() - started < 3


def test_streamed_bytes_that_are_not_utf8_are_a_rejected_reply(server: FakeServer) -> None:
    body = sse("fine ", done=False) + b'data: {"choices": [{"index": 0, "delta": {"content": "caf\xe9"}}]}\n\n'
    server.play(("reply", 200, "text/event-stream", body + b"data: [DONE]\n\n"))
    with pytest.raises(BadReply) as info:
        OpenAIGenerator(server.url).generate(QUESTION)
    assert info.value.reason == "reply_not_utf8"
    assert "\n" not in str(info.value) and "not UTF-8" in str(info.value) and server.url in str(info.value)


def test_a_whole_reply_with_bytes_that_are_not_utf8_is_rejected_not_replaced(server: FakeServer) -> None:
    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "caf@"}}]}).encode()
    server.play(("reply", 200, "application/json", body.replace(b"@", b"\xe9")))
    with pytest.raises(BadReply) as info:
        OpenAIGenerator(server.url).generate(QUESTION)
    assert info.value.reason == "reply_not_utf8" and "\ufffd" not in str(info.value)


def test_a_whole_reply_over_the_cap_is_rejected(server: FakeServer) -> None:
    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 2000}}]})
    server.play(("reply", 200, "application/json", body.encode()))
    with pytest.raises(BadReply, match="more than 1024 bytes") as info:
        OpenAIGenerator(server.url, max_reply_bytes=1024).generate(QUESTION)
    assert info.value.reason == "reply_too_long"
    assert OpenAIGenerator(server.url, max_reply_bytes=20_000).generate(QUESTION) == "word " * 2000


def test_the_limits_are_settings_with_defaults_and_ranges(server: FakeServer, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path) -> None:
    from rag.api import get_generator
    from rag.config import Settings, load_settings

    fields = Settings.model_fields
    assert (fields["model_timeout"].default, fields["model_deadline"].default,
            fields["model_max_reply_bytes"].default) == (120.0, 300.0, 65536)
    assert all(fields[k].description for k in ("model_timeout", "model_deadline", "model_max_reply_bytes"))
    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_MODEL_DEADLINE", "0")
    with pytest.raises(RagError, match=r"invalid setting model_deadline \(from RAG_MODEL_DEADLINE\)"):
        load_settings()
    monkeypatch.delenv("RAG_MODEL_DEADLINE")
    with pytest.raises(RagError, match="invalid setting model_max_reply_bytes"):
        load_settings(model_max_reply_bytes=10)
    settings = load_settings(model=server.url, model_timeout=7, model_deadline=9, model_max_reply_bytes=2048,
                             index_dir=tmp_path / "index")
    generator = get_generator(settings)
    assert isinstance(generator, OpenAIGenerator)
    assert (generator.read_timeout, generator.deadline, generator.max_reply_bytes) == (7, 9, 2048)
