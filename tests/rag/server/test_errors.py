"""What `rag serve` refuses before any model is asked, and how: unsupported or invalid fields, malformed bodies,
an unknown model and oversized requests are 4xx errors in OpenAI's shape naming the field (the `gate` server's
model is a server nobody runs, so nothing here loads a language model)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.rag.server.served import body, msgs


@pytest.mark.parametrize("fields,param", [
    ({"n": 2}, "n"),
    ({"stop": [5]}, "stop[0]"),
    ({"stop": {"a": 1}}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream": "false"}, "stream"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"seed": 2**70}, "seed"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format.type"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"modalities": ["audio"]}, "modalities"),
    ({"store": True}, "store"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"best_of": 2}, "best_of"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}, *msgs()]}, "messages[0].role"),
    ({"messages": [*msgs(), {"role": "assistant", "content": "..."}]}, "messages"),
    ({"messages": []}, "messages"),
])
def test_unsupported_or_invalid_fields_are_400_naming_them(gate, fields, param):
    client = gate.client()
    kw = {"model": "course-rag", "messages": msgs(), "max_tokens": 4}
    extra = {k: v for k, v in fields.items() if k != "messages"}
    kw.update({k: v for k, v in fields.items() if k == "messages"})
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**kw, extra_body=extra)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and param.split("[")[0].split(".")[0] in err.value.body["message"]


def test_refusals_come_before_any_stream_starts(gate):
    r = gate.post(body(stop=[5], stream=True))  # was a dropped connection without [DONE]
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["param"] == "stop[0]"


def test_malformed_bodies_are_400_not_500(gate):
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"model": "course-rag", "messages": [' + b"{" * 50_000,
                b"not json", b"[1, 2]", b'{"model": "course-rag", "messages": [], "temperature": NaN}'):
        r = httpx.post(gate.url + "/v1/chat/completions", content=raw, timeout=60,
                       headers={**gate.headers, "Content-Type": "application/json"})
        assert r.status_code == 400, (raw[:40], r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    nan = httpx.post(gate.url + "/v1/chat/completions", timeout=60,
                     headers={**gate.headers, "Content-Type": "application/json"},
                     content=b'{"model": "course-rag", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}')
    assert nan.json()["error"]["param"] == "temperature"


def test_unknown_model_is_404(gate):
    with pytest.raises(openai.NotFoundError) as err:
        gate.client().chat.completions.create(model="gpt-4o", messages=msgs(), max_tokens=4)
    assert err.value.body["param"] == "model" and "course-rag" in err.value.body["message"]


def test_body_and_conversation_size_caps(gate):
    huge = "x" * (5 * 1024 * 1024)
    r = gate.post({"model": "course-rag", "messages": [{"role": "user", "content": huge}, *msgs()]})
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    turns = [{"role": "user", "content": "y" * 30_000}, {"role": "assistant", "content": "z" * 30_000}, *msgs()]
    r = gate.post({"model": "course-rag", "messages": turns, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "characters long" in r.json()["error"]["message"]
