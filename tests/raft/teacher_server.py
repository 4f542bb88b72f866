"""An OpenAI-compatible chat server on 127.0.0.1 that answers as the scripted teacher of test_synth.py
(deterministic questions and quoting answers, streamed as server-sent events): a real server for what a vLLM
server would do, since no such model runs here. `raft generate --engine ray` and `raft course` tests use it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.raft.synth.test_synth import ScriptedTeacher


class TeacherServer:
    """An OpenAI-compatible chat server on 127.0.0.1 answering as ScriptedTeacher, `delay` seconds per
    request; counts requests in flight (`max_in_flight`) and can hold new ones (`gate`)."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.served = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with owner.lock:
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    owner.gate.wait(120)
                    time.sleep(owner.delay)
                    try:
                        text = "".join(ScriptedTeacher().stream(body["messages"]))
                    except IndexError:  # not a RAFT request (a one-token warm-up): any server answers something
                        text = "OK"
                    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]},
                              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
                    payload = ("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n").encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    with owner.lock:
                        owner.in_flight -= 1
                        owner.served += 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a killed client leaves its handler writing to a closed socket

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
