"""`rag serve` as a real process on 127.0.0.1 for the tests of this folder: starting it, polling its /health,
posting to it, and the requests they send. The bundled model answers with a few tokens (`-k 2` keeps prompts
short on a 2-core CPU); the fixtures that start the shared servers are in conftest.py."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.fake_openai import free_port

KEY = "test-key-4a1f"
ON_TOPIC = "What does LoRA freeze?"
OFF_TOPIC = "How do I bake sourdough bread at home?"
LONG = 1024  # tokens for a request that must hold the model until the test lets it go (the server's most)
# With a repetition penalty below 1 the model repeats itself instead of ending its answer: a blocker that
# really runs to LONG tokens, whatever the question (at 1.1 the answer is often done in 15 tokens).
HOLD = {"max_tokens": LONG, "repetition_penalty": 0.3}
POLL_S = 120  # bound of every polling loop (the answer comes much sooner; this only stops a hung test)


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
    """`rag serve` on a free loopback port (IPv6 if `ipv6`) over `index_dir` with `args`, until it answers
    /health (at most 300 s); terminated on exit. RuntimeError with its output if it exits first."""
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


# the shared servers' gate: an API key, one allowed CORS origin, at most 4 waiting
GATE_ARGS = ("--api-key", KEY, "--max-queue", "4", "--cors-origin", "http://allowed.example")


def msgs(question: str = ON_TOPIC) -> list[dict[str, Any]]:
    """A one-turn conversation asking `question`."""
    return [{"role": "user", "content": question}]


def body(question: str = ON_TOPIC, **fields: Any) -> dict[str, Any]:
    """A chat completion request for `question` (4 tokens at most unless `fields` say otherwise)."""
    return {"model": "course-rag", "messages": msgs(question), "max_tokens": 4, **fields}
