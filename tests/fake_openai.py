"""The one fake OpenAI-compatible chat server of the suite: a real HTTP server on 127.0.0.1 that plays back
scripted responses, including a server misbehaving on purpose, and records the requests it got.

Script entries (`FakeServer.play`), each a tuple:

- ("reply", status, content_type, body): one response with a Content-Length.
- ("redirect", url): a 307 to `url` (the method and the body are kept).
- ("cut", text): one chunk of a chunked event stream holding `text`, then the connection is dropped.
- ("sleep", seconds): say nothing for `seconds`, then stream "late".
- ("hang",): accept the request and never answer (until the server is closed).
- ("drip", pieces, delay): an event stream of `pieces`, one every `delay` seconds, then [DONE].
- ("endless", text, delay): an event stream that sends `text` every `delay` seconds and never ends
  (a teacher that ignores max_tokens); it stops when the client goes away or the server is closed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sse(*contents: str, done: bool = True) -> bytes:
    """A chat.completion.chunk event stream whose deltas hold `contents`, optionally ending in [DONE]."""
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    chunks += [{"choices": [{"index": 0, "delta": {"content": c}}]} for c in contents]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


class FakeServer:
    """A real HTTP server on 127.0.0.1 that plays back scripted responses and records requests."""

    def __init__(self) -> None:
        self.script: list[tuple[Any, ...]] = []
        self.requests: list[dict[str, Any]] = []
        self.closed = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                # header names are case-insensitive (the openai client sends them in lower case)
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.requests.append({"path": self.path, "headers": headers, "json": json.loads(body)})
                kind, *args = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                if kind == "sleep":
                    time.sleep(args[0])
                    kind, *args = "reply", 200, "text/event-stream", sse("late")
                if kind == "reply":
                    status, ctype, payload = args
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                elif kind == "redirect":  # 307 keeps the method and the body
                    self.send_response(307)
                    self.send_header("Location", args[0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif kind == "cut":  # one chunk of a chunked body, then hang up mid-stream
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self._chunk(sse(args[0], done=False))
                    self.close_connection = True
                elif kind == "hang":  # accepted, never answered
                    owner.closed.wait(600)
                    self.close_connection = True
                elif kind == "drip":  # a stream that takes its time, piece by piece
                    pieces, delay = args
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for piece in pieces:
                            event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
                            time.sleep(delay)
                        self._chunk(b"data: [DONE]\n\n")
                        self._chunk(b"")
                    except OSError:
                        pass
                elif kind == "endless":  # a stream that never ends
                    text, delay = args
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    event = f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': text}}]})}\n\n"
                    try:
                        while not owner.closed.is_set():
                            self._chunk(event.encode())
                            if delay:
                                time.sleep(delay)
                    except OSError:  # the client hung up: what it should do
                        pass
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that time out on purpose make the handler hit a broken pipe

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def play(self, *responses: tuple[Any, ...]) -> None:
        """Answer the next requests with `responses` in order; the last one repeats."""
        self.script[:] = list(responses)
        self.requests.clear()

    def close(self) -> None:
        """Stop serving; handlers that hang or stream forever end."""
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
