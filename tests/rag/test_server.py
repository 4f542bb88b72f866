"""`rag serve` as a real process on 127.0.0.1: OpenAI conformance through the official `openai` client,
fairness under load (bounded request loops, order and status codes, never timings), access rules; and
the per-call settings of RagPipeline.ask() it relies on. The bundled model answers with a few tokens
(`-k 2` keeps prompts short on a 2-core CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rag.answering.plan import MAX_TURN_CHARS
from rag.api import make_pipeline
from rag.errors import RagError
from rag.generation.base import GenerationCancelled, GenerationParams
from rag.generation.spec import COURSE_MODEL_ID
from rag.generation.http import OpenAIGenerator
from tests.conftest import ROOT

KEY = "test-key-4a1f"
ON_TOPIC = "What does LoRA freeze?"
OFF_TOPIC = "How do I bake sourdough bread at home?"
LONG = 1024  # tokens for a request that must hold the model until the test lets it go (the server's most)
# With a repetition penalty below 1 the model repeats itself instead of ending its answer: a blocker that
# really runs to LONG tokens, whatever the question (at 1.1 the answer is often done in 15 tokens).
HOLD = {"max_tokens": LONG, "repetition_penalty": 0.3}
POLL_S = 120  # bound of every polling loop (the answer comes much sooner; this only stops a hung test)


def free_port(ipv6: bool = False) -> int:
    with socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET) as s:
        s.bind(("::1" if ipv6 else "127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running `rag serve`: its base URL, the key to use, and helpers to poll /health."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url, self.key = url, key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key or "none", max_retries=0, **kw)

    def health(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/health", headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_queue(self, **expected: int) -> dict[str, Any]:
        """Poll /health until every queue stat in `expected` has that value."""
        deadline = time.monotonic() + POLL_S
        while True:
            q = self.health()["queue"]
            if all(q[k] == v for k, v in expected.items()):
                return q
            assert time.monotonic() < deadline, f"queue never reached {expected}: {q}"
            time.sleep(0.05)

    def post(self, body: Any, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.post(self.url + "/v1/chat/completions", json=body, headers=headers, timeout=POLL_S, **kw)


@contextlib.contextmanager
def start_server(index_dir: Path, *args: str, env: dict[str, str] | None = None,
                 key: str | None = None, ipv6: bool = False) -> Iterator[Served]:
    port = free_port(ipv6)
    # Free answers: the model streams every token, which is what the queue, max_tokens and cancel tests need
    # (the grounded mode's quote is rag/answering's to test).
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "serve", "--port", str(port), "--index-dir",
                             str(index_dir), "--max-new-tokens", "8", "-k", "2", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAG_ANSWER_MODE": "free", **(env or {})})
    served = Served(f"http://{'[::1]' if ipv6 else '127.0.0.1'}:{port}", key)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(served.url + "/health", headers=served.headers, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read())
        assert time.monotonic() < deadline, "rag serve did not start"
        time.sleep(0.5)
    try:
        yield served
    finally:
        proc.terminate()
        proc.wait(timeout=30)


GATE_ARGS = ("--api-key", KEY, "--max-queue", "4", "--cors-origin", "http://allowed.example")


@pytest.fixture(scope="module")
def server(course_index) -> Iterator[Served]:
    """`rag serve` with the bundled base model (named: the course's default is its RAFT adapter, tested below; the
    queue tests hold the model with a reply the base model never ends): an API key, one allowed CORS origin, at
    most 4 waiting, one answer at a time (the queue tests count who runs and who waits)."""
    with start_server(course_index.index_dir, *GATE_ARGS, "--model", "bundled", "--slots", "1", key=KEY) as served:
        yield served


@pytest.mark.slow  # another `rag serve` process, and the adapter merged on first use
@pytest.mark.llm
def test_the_shipped_course_is_served_by_its_raft_adapter(course_index):
    with start_server(course_index.index_dir, env={"RAG_ANSWER_MODE": "grounded"}) as served:
        assert served.health()["model"] == COURSE_MODEL_ID  # the default model on the shipped course
        reply = served.client().chat.completions.create(model="course-rag", messages=msgs(), max_tokens=8)
        text = reply.choices[0].message.content
        assert text.strip() and "##" not in text and "<ANSWER>" not in text and reply.model_extra["sources"]


@pytest.fixture(scope="module")
def gate(course_index) -> Iterator[Served]:
    """The same `rag serve`, but its model is a server nobody runs: for what must be refused before any
    model is asked (validation, limits, access), without loading a language model."""
    with start_server(course_index.index_dir, *GATE_ARGS, "--model", f"http://127.0.0.1:{free_port()}/v1",
                      key=KEY) as served:
        yield served


def msgs(question: str = ON_TOPIC) -> list[dict[str, Any]]:
    return [{"role": "user", "content": question}]


def body(question: str = ON_TOPIC, **fields: Any) -> dict[str, Any]:
    return {"model": "course-rag", "messages": msgs(question), "max_tokens": 4, **fields}


# ---- OpenAI conformance, through the official client ---------------------------------------------

@pytest.mark.llm
def test_openai_client_stream_and_non_stream_give_the_same_answer(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == ["course-rag"]
    done = client.chat.completions.create(model="course-rag", messages=msgs(), max_tokens=6)
    choice = done.choices[0]
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-") and done.model == "course-rag"
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length") and len(done.choices) == 1
    assert done.usage.completion_tokens <= 6
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens > 0
    assert done.model_extra["sources"] and done.model_extra["abstained"] is False

    chunks = list(client.chat.completions.create(model="course-rag", messages=msgs(), max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True}))
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text.strip() == choice.message.content  # greedy: the same answer either way
    assert [c.choices[0].finish_reason for c in with_choices].count(None) == len(with_choices) - 1
    assert with_choices[-1].choices[0].finish_reason == choice.finish_reason
    assert with_choices[-1].model_extra["sources"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == done.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.llm
def test_text_parts_and_system_messages_are_read(server):
    client = server.client()
    plain = client.chat.completions.create(model="course-rag", messages=msgs(), max_tokens=4)
    parts = client.chat.completions.create(model="course-rag", max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What does LoRA"}, {"type": "text", "text": "freeze?"}]}])
    assert parts.choices[0].message.content.strip()
    assert parts.model_extra["sources"][0]["source"] == plain.model_extra["sources"][0]["source"]
    system = client.chat.completions.create(model="course-rag", max_tokens=4, messages=[
        {"role": "system", "content": "Answer in one word."}, {"role": "developer", "content": "Be formal."},
        *msgs()])
    assert system.usage.prompt_tokens > plain.usage.prompt_tokens  # the instructions reached the prompt


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


@pytest.mark.llm
def test_the_projects_http_backend_reads_rag_serve(server):
    gen = OpenAIGenerator(server.url + "/v1", model_name="course-rag", api_key=KEY)
    pieces = list(gen.stream(msgs(), GenerationParams(max_new_tokens=6)))
    assert pieces and "".join(pieces).strip()


# ---- fair under load -----------------------------------------------------------------------------

class Client(threading.Thread):
    """One request in its own thread; records when its answer (or first streamed token) arrived.

    `leave()` makes a streaming client hang up at the next event it receives (a waiting stream gets an
    SSE comment every second, a generating one its tokens), as a closed browser tab does.
    """

    def __init__(self, server: Served, payload: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.server, self.payload = server, payload
        self.first: float | None = None
        self.status: int | None = None
        self.result: Any = None
        self.headers: dict[str, str] = {}
        self._leave = threading.Event()
        self.start()

    def leave(self) -> None:
        leave(self)

    def run(self) -> None:
        if not self.payload.get("stream"):
            r = self.server.post(self.payload)
            arrived, self.status, self.headers = time.monotonic(), r.status_code, r.headers
            self.result = r.json()
            # When its first token was made: the reply arrives only after the whole answer, by which time the
            # next in line may already stream; the server's timings say how long the answer took after it.
            t = self.result.get("timings") or {}
            self.first = arrived - max(0.0, t.get("generate", 0.0) - t.get("first_token", 0.0)) - t.get("attribute", 0.0)
            return
        with httpx.stream("POST", self.server.url + "/v1/chat/completions", json=self.payload,
                          headers=self.server.headers, timeout=POLL_S) as r:
            self.status, self.headers = r.status_code, r.headers
            events = []
            for line in r.iter_lines():
                if self._leave.is_set():
                    return
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if self.first is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                        self.first = time.monotonic()
                    events.append(event)
            self.result = events


def leave(*clients: Client) -> None:
    """Make streaming clients hang up (all at once), and wait until they have."""
    for c in clients:
        c._leave.set()
    for c in clients:
        c.join(POLL_S)


@pytest.mark.slow  # another `rag serve` process
@pytest.mark.llm
def test_concurrent_streams_are_answered_together(course_index):
    """The default `rag serve` (4 slots, the ONNX decoder's continuous batching): three streams run at once,
    each gets the answer it gets alone, and the queue shows them all running (none waits for another)."""
    with start_server(course_index.index_dir, "--model", "bundled") as served:
        questions = [ON_TOPIC, "What is retrieval augmented generation?", "What is a distractor document?"]
        alone = []
        for q in questions:
            events = Client(served, body(q, stream=True, max_tokens=24))
            events.join(POLL_S)
            alone.append("".join(e["choices"][0]["delta"].get("content") or "" for e in events.result
                                 if e.get("choices")))
        clients = [Client(served, body(q, stream=True, max_tokens=24)) for q in questions]
        seen_running = 0
        while any(c.is_alive() for c in clients):
            seen_running = max(seen_running, served.health()["queue"]["running"])
            time.sleep(0.05)
        together = ["".join(e["choices"][0]["delta"].get("content") or "" for e in c.result if e.get("choices"))
                    for c in clients]
        assert [c.status for c in clients] == [200, 200, 200] and together == alone and all(alone)
        assert seen_running >= 2 and served.health()["queue"]["slots"] == 4


@pytest.mark.llm
def test_arrival_order_and_no_model_work_never_waits(server):
    blocker = Client(server, body(**HOLD, stream=True))
    server.wait_queue(running=1)
    stopped = server.health()["queue"]["stopped"]
    line = []
    for i, stream in enumerate([False, True, False, True]):  # each is in line before the next is sent
        line.append(Client(server, body(stream=stream)))
        server.wait_queue(waiting=i + 1)
    assert server.health()["queue"]["waiting"] == 4  # /health answers whatever the queue
    off_topic = Client(server, body(OFF_TOPIC))
    off_topic.join(POLL_S)
    assert off_topic.status == 200 and off_topic.result["abstained"] is True
    assert all(c.first is None for c in line)  # the abstention did not wait behind any of them
    blocker.leave()  # a client that disconnects mid-answer: the model stops and the line moves on
    for c in line:
        c.join(POLL_S)
        assert c.status == 200
    firsts = [c.first for c in line]
    assert None not in firsts and firsts == sorted(firsts)  # served in arrival order, streams or not
    assert server.wait_queue(running=0, waiting=0)["stopped"] == stopped + 1


@pytest.mark.llm
def test_full_queue_gets_429_and_clients_that_leave_free_their_place(server):
    blocker = Client(server, body(**HOLD, stream=True))
    server.wait_queue(running=1)
    waiting = [Client(server, body(stream=True)) for _ in range(4)]
    server.wait_queue(waiting=4)
    refused = server.post(body())
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    with pytest.raises(openai.RateLimitError):  # what the official client sees (it would retry after Retry-After)
        server.client().chat.completions.create(model="course-rag", messages=msgs(), max_tokens=4)
    assert server.post(body(OFF_TOPIC)).status_code == 200  # an abstention needs no place in line
    leave(*waiting)
    assert server.wait_queue(waiting=0)["running"] == 1  # they left the line; the blocker still runs
    stopped = server.health()["queue"]["stopped"]
    blocker.leave()
    assert server.wait_queue(running=0)["stopped"] == stopped + 1
    assert server.post(body()).status_code == 200  # and the model serves the next one


@pytest.mark.llm
def test_a_non_streaming_client_that_disconnects_frees_the_model(server):
    stopped = server.health()["queue"]["stopped"]
    payload = json.dumps(body(**HOLD)).encode()
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nAuthorization: Bearer " + KEY.encode() +
                     b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        server.wait_queue(running=1)
    assert server.wait_queue(running=0)["stopped"] == stopped + 1


@pytest.mark.llm
def test_per_request_settings_do_not_leak_between_concurrent_requests(server):
    short = Client(server, body(max_tokens=1))
    longer = Client(server, body(max_tokens=6))
    short.join(POLL_S), longer.join(POLL_S)
    assert len(short.result["choices"][0]["message"]["content"].split()) <= 1
    assert short.result["choices"][0]["finish_reason"] == "length"
    assert longer.result["usage"]["completion_tokens"] > 1
    top1 = server.post(body(OFF_TOPIC, retrieval_top_k=1, retrieval_mode="bm25")).json()
    assert len(top1["sources"]) == 1


def test_body_and_conversation_size_caps(gate):
    huge = "x" * (5 * 1024 * 1024)
    r = gate.post({"model": "course-rag", "messages": [{"role": "user", "content": huge}, *msgs()]})
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    turns = [{"role": "user", "content": "y" * 30_000}, {"role": "assistant", "content": "z" * 30_000}, *msgs()]
    r = gate.post({"model": "course-rag", "messages": turns, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "characters long" in r.json()["error"]["message"]


# ---- closed to strangers -------------------------------------------------------------------------

def test_api_key_is_required_everywhere(gate):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            r = httpx.request(method, gate.url + path, headers=headers, json=body(), timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (headers, path)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gate.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_only_json_bodies_and_loopback_hosts(gate):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        r = httpx.post(gate.url + "/v1/chat/completions", content=json.dumps(body()),
                       headers={**gate.headers, "Content-Type": ctype}, timeout=30)
        assert r.status_code == 415, ctype
    r = httpx.get(gate.url + "/health", headers={**gate.headers, "Host": "attacker.example"}, timeout=30)
    assert r.status_code == 400  # a DNS-rebinding page cannot reach the server through a browser


def test_cors_allows_only_configured_origins_and_docs_are_off(gate):
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(gate.url + "/v1/chat/completions", timeout=30, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})

    ok = preflight("http://allowed.example")
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://allowed.example"
    assert "access-control-allow-origin" not in preflight("http://evil.example").headers
    r = httpx.get(gate.url + "/v1/models", headers={**gate.headers, "Origin": "http://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in r.headers
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(gate.url + path, headers=gate.headers, timeout=30).status_code == 404


@pytest.mark.slow  # another `rag serve` process (~12 s)
def test_key_from_the_environment_and_docs_on_request(course_index):
    with start_server(course_index.index_dir, "--docs", "--model", f"http://127.0.0.1:{free_port()}/v1",
                      env={"RAG_SERVER_API_KEY": "env-key"}, key="env-key") as served:
        assert httpx.get(served.url + "/docs", timeout=30).status_code == 401
        assert httpx.get(served.url + "/docs", headers=served.headers, timeout=30).status_code == 200
        spec = httpx.get(served.url + "/openapi.json", headers=served.headers, timeout=30).json()
        assert "/v1/chat/completions" in spec["paths"]
        assert "access-control-allow-origin" not in httpx.options(
            served.url + "/v1/models", headers={"Origin": "http://a.example", "Access-Control-Request-Method": "GET"},
            timeout=30).headers  # no CORS origins configured: none allowed


def test_every_readme_server_command_binds_loopback():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    apps = re.findall(r"streamlit run [^`\n#]*", readme)
    servers = re.findall(r"rag serve[^`\n#]*", readme)
    assert apps and servers
    for command in apps:  # an explicit address; the network only next to the admin secret it needs
        address = re.search(r"--server\.address (\S+)", command)
        assert address, command
        assert address.group(1) == "127.0.0.1" or "export RAG_ADMIN_SECRET" in readme, command
    for command in servers:  # rag serve's default host is 127.0.0.1; another host only with a key
        host = re.search(r"--host (\S+)", command)
        assert host is None or host.group(1) == "127.0.0.1" or "--api-key" in command, command
    assert "--server.address 127.0.0.1" in (ROOT / "scripts" / "run.sh").read_text(encoding="utf-8")
    config = (ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8")
    assert re.search(r'address\s*=\s*"127\.0\.0\.1"', config)  # a bare `streamlit run` here binds loopback too
    help_text = subprocess.run([str(Path(sys.executable).parent / "rag"), "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert re.search(r"--host TEXT.*\[default: 127\.0\.0\.1\]", " ".join(help_text.split()))


# ---- RagPipeline.ask per-call settings (what the server relies on) -------------------------------

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



def test_a_port_in_use_is_one_line_and_exit_3_before_any_model_loads(course_index):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(Path(sys.executable).parent / "rag"), "serve", "--port", str(port), "--index-dir",
                               str(course_index.index_dir)], capture_output=True, text=True, timeout=POLL_S)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0], done.stderr


@pytest.mark.slow  # another `rag serve` process (~12 s)
def test_ipv6_loopback_host_is_served(course_index):
    with start_server(course_index.index_dir, "--host", "::1", "--model", f"http://127.0.0.1:{free_port()}/v1",
                      ipv6=True) as served:
        r = httpx.get(served.url + "/health", timeout=30)  # httpx sends Host: [::1]:port
        assert r.status_code == 200, r.text
        assert httpx.get(served.url + "/health", headers={"Host": "evil.example"}, timeout=30).status_code == 400
