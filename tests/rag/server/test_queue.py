"""`rag serve` is fair under load: bounded request loops, order and status codes, never timings. Requests are
answered in arrival order, work that needs no model never waits, a full line gets 429, clients that leave free
their place and the model, and per-request settings never leak between concurrent requests."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from tests.rag.server.served import HOLD, KEY, OFF_TOPIC, ON_TOPIC, POLL_S, Served, body, msgs, start_server


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
    """`rag serve` (4 slots, the ONNX decoder's continuous batching): three streams run at once, each gets the
    answer it gets alone, and the queue shows them all running (none waits for another). On the exact path
    (fp32 products, prompts in float32): the default's 8-bit activations and bf16 prompts are not bit for bit
    the same in a batch as alone, so there the batching itself could not be checked this way."""
    exact = {"RAG_DECODER": "fp32", "RAG_PREFILL_DTYPE": "float32"}
    with start_server(course_index.index_dir, "--model", "bundled", env=exact) as served:
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
