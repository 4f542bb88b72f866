"""`rag serve` is closed to strangers: an API key on every route, JSON bodies only, loopback Host headers only,
CORS for configured origins only, the API docs off unless asked for; it binds loopback (IPv4 or IPv6) by default,
as every server command in the README does, and a port in use is one line before any model loads."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ROOT
from tests.rag.server.served import KEY, POLL_S, body, free_port, start_server


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


def test_every_documented_server_command_binds_loopback():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # the README and the docs site's pages
    apps = servers = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for command in re.findall(r"streamlit run [^`\n#]*", text):  # an explicit address; the network only
            apps += 1                                                  # next to the admin secret it needs
            address = re.search(r"--server\.address (\S+)", command)
            assert address, (page, command)
            assert address.group(1) == "127.0.0.1" or "export RAG_ADMIN_SECRET" in text, (page, command)
        for command in re.findall(r"rag serve[^`\n#]*", text):  # default host 127.0.0.1; another only with a key
            servers += 1
            host = re.search(r"--host (\S+)", command)
            assert host is None or host.group(1) == "127.0.0.1" or "--api-key" in command, (page, command)
    assert apps and servers
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "streamlit run ui/app.py --server.address 127.0.0.1" in readme and "rag serve" in readme
    assert "--server.address 127.0.0.1" in (ROOT / "scripts" / "run.sh").read_text(encoding="utf-8")
    config = (ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8")
    assert re.search(r'address\s*=\s*"127\.0\.0\.1"', config)  # a bare `streamlit run` here binds loopback too
    help_text = subprocess.run([str(Path(sys.executable).parent / "rag"), "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert re.search(r"--host TEXT.*\[default: 127\.0\.0\.1\]", " ".join(help_text.split()))


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
