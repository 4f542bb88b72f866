"""The one fake OpenAI-compatible chat server of the suite: a real HTTP server on 127.0.0.1 (a stand-in for a
model server such as vLLM or Ollama, which cannot run here) that plays back scripted responses, including a
server misbehaving on purpose, and records every request it got.

Script entries (`FakeServer.play`), each a tuple:

- ("reply", status, content_type, body): one response with a Content-Length.
- ("answer", respond): a streamed chat completion of the text `respond(request_json)` returns (a server
  that answers what it is asked, e.g. the scripted RAFT teacher), ending in finish_reason "stop" and [DONE].
- ("redirect", url): a 307 to `url` (the method and the body are kept).
- ("cut", text): one chunk of a chunked event stream holding `text`, then the connection is dropped.
- ("sleep", seconds): say nothing for `seconds`, then stream "late".
- ("hang",): accept the request and never answer (until the server is closed).
- ("drip", pieces, delay): an event stream of `pieces`, one every `delay` seconds, then [DONE].
- ("endless", text, delay): an event stream that sends `text` every `delay` seconds and never ends
  (a teacher that ignores max_tokens); it stops when the client goes away or the server is closed.

Every request, POST or GET, is recorded in `requests` as {"method", "path", "headers" (lower-case names),
"json" (the parsed body, None for a GET)}. Before answering, a request waits for `gate` (set by default;
clear it to hold new requests) and then `delay` seconds; `in_flight`, `max_in_flight` and `served` count
the requests being answered, the most at once, and those answered.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

def free_port(ipv6: bool = False) -> int:
    """A TCP port on 127.0.0.1 (::1 if `ipv6`) that nothing listens on (at the time of asking)."""
    with socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET) as s:
        s.bind(("::1" if ipv6 else "127.0.0.1", 0))
        return s.getsockname()[1]


def _event(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    choice: dict[str, Any] = {"index": 0, "delta": delta}
    if finish_reason:
        choice["finish_reason"] = finish_reason
    return f"data: {json.dumps({'choices': [choice]})}\n\n"


def sse(*contents: str, done: bool = True, finish_reason: str | None = None) -> bytes:
    """A chat.completion.chunk event stream: a role delta, one delta per item of `contents`, the last one
    carrying `finish_reason` if given, then [DONE] unless `done` is False."""
    events = [_event({"role": "assistant"})]
    last = len(contents) - 1
    events += [_event({"content": c}, finish_reason if i == last else None) for i, c in enumerate(contents)]
    return ("".join(events) + ("data: [DONE]\n\n" if done else "")).encode()


class FakeServer:
    """A real HTTP server on 127.0.0.1 that plays back scripted responses and records requests.

    `url` is the OpenAI base URL (".../v1"), `origin` the server's "http://127.0.0.1:port". Close it
    with `close()` (the `fake_openai` fixture of tests/conftest.py makes one per test and does)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.script: list[tuple[Any, ...]] = [("reply", 200, "text/event-stream", sse("ok"))]
        self.requests: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.served = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner._serve(self, json.loads(body) if body else None)

            def do_GET(self) -> None:
                owner._serve(self, None)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that time out or are killed on purpose make the handler hit a broken pipe

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.origin}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def play(self, *responses: tuple[Any, ...]) -> FakeServer:
        """Answer the next requests with `responses` in order; the last one repeats. Forgets the requests
        recorded so far. Returns the server."""
        self.script[:] = list(responses)
        self.requests.clear()
        return self

    def authorizations(self) -> list[str | None]:
        """The Authorization header of every recorded request (None where there was none), in order."""
        return [r["headers"].get("authorization") for r in self.requests]

    def close(self) -> None:
        """Stop serving; handlers that hang, wait at the gate or stream forever end."""
        self.closed.set()
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- the handler's side

    def _serve(self, handler: BaseHTTPRequestHandler, request: Any) -> None:
        # header names are case-insensitive (the openai client sends them in lower case)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.requests.append({"method": handler.command, "path": handler.path, "headers": headers, "json": request})
        entry = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.gate.wait(120)
            if self.delay:
                time.sleep(self.delay)
            self._respond(handler, request, *entry)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.served += 1

    def _respond(self, h: BaseHTTPRequestHandler, request: Any, kind: str, *args: Any) -> None:
        if kind == "sleep":
            time.sleep(args[0])
            kind, args = "reply", (200, "text/event-stream", sse("late"))
        if kind == "answer":
            kind, args = "reply", (200, "text/event-stream", sse(args[0](request), finish_reason="stop"))
        if kind == "reply":
            status, ctype, payload = args
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        elif kind == "redirect":  # 307 keeps the method and the body
            h.send_response(307)
            h.send_header("Location", args[0])
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif kind == "cut":  # one chunk of a chunked body, then hang up mid-stream
            self._start_stream(h)
            _chunk(h, sse(args[0], done=False))
            h.close_connection = True
        elif kind == "hang":  # accepted, never answered
            self.closed.wait(600)
            h.close_connection = True
        elif kind == "drip":  # a stream that takes its time, piece by piece
            pieces, delay = args
            self._start_stream(h)
            try:
                for piece in pieces:
                    _chunk(h, _event({"content": piece}).encode())
                    time.sleep(delay)
                _chunk(h, b"data: [DONE]\n\n")
                _chunk(h, b"")
            except OSError:
                pass
        elif kind == "endless":  # a stream that never ends
            text, delay = args
            self._start_stream(h)
            try:
                while not self.closed.is_set():
                    _chunk(h, _event({"content": text}).encode())
                    if delay:
                        time.sleep(delay)
            except OSError:  # the client hung up: what it should do
                pass
            h.close_connection = True
        else:
            raise ValueError(f"unknown script entry {kind!r}")

    @staticmethod
    def _start_stream(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()


def _chunk(h: BaseHTTPRequestHandler, data: bytes) -> None:
    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    h.wfile.flush()


def answering(respond: Callable[[Any], str], delay: float = 0.0) -> FakeServer:
    """A FakeServer that answers every request with the streamed text `respond(request_json)`."""
    return FakeServer(delay=delay).play(("answer", respond))
