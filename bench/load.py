"""`rag serve` under load: latency p50/p95, errors and /health latency at concurrency 1, 4 and 20.

Starts a real `rag serve` on 127.0.0.1 (bundled model, `--max-new-tokens 8` answers) and drives it with
bounded closed loops: at each concurrency level C, C client threads share max(8, 2*C) requests, a
rotation of on-topic streamed, on-topic non-streamed and off-topic (abstaining) questions from eval/.
A client that gets 429 waits Retry-After (capped at --max-retry-wait) before its next request. A
sampler GETs /health every 0.25 s throughout. Afterwards it measures how long the model stays busy
after a streaming client disconnects, mid-answer and during prompt prefill.

    python -m bench.load [--levels 1,4,20] [--max-tokens 8] [--max-queue 16] [--baseline-ref REF]

`--baseline-ref e5b8d60` (the last commit with the single-lock rag/server.py) also runs that server, from
its own source, in a separate process; each level then runs on both in turn, for a before/after table
measured under the same machine load.
Results: bench/results/load.json and load.md. Timings are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.benchutil import (
    ROOT,
    LoadMeter,
    finish_run,
    fmt,
    machine_info,
    md_table,
    percentile,
    wait_for_quiet,
)

MODEL = "course-rag"
HEALTH_EVERY_S = 0.25
# Two streams count as sent in order when sent this far apart: 20 client threads on a busy 2-core machine
# can start a request a few hundred ms after taking its timestamp.
ORDER_GAP_S = 0.5

# The server of an older commit, run from its own source (git show REF:rag/server.py) for the baseline.
BASELINE_MAIN = """
import importlib.util, sys, uvicorn
from rag.api import make_pipeline
from rag.config import load_settings
spec = importlib.util.spec_from_file_location("old_server", sys.argv[1])
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
settings = load_settings(index_dir=sys.argv[2], max_new_tokens=int(sys.argv[3]), top_k=int(sys.argv[5]))
pipeline = make_pipeline(settings)
pipeline.retriever.search("warm-up", 1)
uvicorn.run(old.create_app(pipeline, "course-rag"), host="127.0.0.1", port=int(sys.argv[4]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, baseline: str | None, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(tmp / f"server-{port}.log", "wb")
    if baseline:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{baseline}:rag/server.py"], check=True,
                                capture_output=True).stdout
        old = tmp / "old_server.py"
        old.write_bytes(source)
        cmd = [sys.executable, "-c", BASELINE_MAIN, str(old), str(args.index_dir), str(args.max_tokens), str(port),
               str(args.top_k)]
    else:
        cmd = [str(Path(sys.executable).parent / "rag"), "serve", "--port", str(port), "--index-dir",
               str(args.index_dir), "--max-new-tokens", str(args.max_tokens), "--max-queue", str(args.max_queue),
               "-k", str(args.top_k)]
    env = {**os.environ, **({"RAG_ANSWER_MODE": args.answer_mode} if args.answer_mode else {})}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {(tmp / f'server-{port}.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start in 300 s")


def workload(n: int) -> list[dict[str, Any]]:
    """n requests: on-topic stream, on-topic non-stream, off-topic (abstains), in rotation."""
    on = [json.loads(line)["question"] for line in (ROOT / "eval" / "dev_questions.jsonl").read_text().splitlines()
          if line.strip()]
    off = [q for q in (ROOT / "eval" / "off_topic_questions.txt").read_text().splitlines() if q.strip()]
    kinds = itertools.cycle(["stream", "complete", "off-topic"])
    out, i_on, i_off = [], itertools.cycle(on), itertools.cycle(off)
    for _ in range(n):
        kind = next(kinds)
        out.append({"kind": kind, "question": next(i_off) if kind == "off-topic" else next(i_on)})
    return out


def one_request(client: httpx.Client, url: str, job: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": job["question"]}], "max_tokens": max_tokens,
            "stream": job["kind"] == "stream"}
    row: dict[str, Any] = {"kind": job["kind"], "sent": time.monotonic()}
    try:
        if body["stream"]:
            with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                row["status"] = r.status_code
                row["retry_after"] = r.headers.get("retry-after")
                ok = r.status_code == 200
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        ok = False
                    choices = event.get("choices") or []
                    if "ttft" not in row and choices and choices[0].get("delta", {}).get("content"):
                        row["ttft"] = time.monotonic() - row["sent"]
                row["ok"] = ok
        else:
            r = client.post(url + "/v1/chat/completions", json=body)
            row["status"], row["retry_after"] = r.status_code, r.headers.get("retry-after")
            row["ok"] = r.status_code == 200
            if row["ok"]:
                reply = r.json()
                row["abstained"] = reply.get("abstained")
                t = reply.get("timings") or {}
                if not row["abstained"] and {"generate", "first_token"} <= set(t):
                    # when its first token came, from the server's own timings: answer arrival minus the
                    # generation and attribution that followed it
                    row["first_token_at"] = (time.monotonic() - row["sent"] - t["generate"] - t.get("attribute", 0)
                                             + t["first_token"])
    except httpx.HTTPError as exc:
        row["status"], row["ok"], row["error"] = None, False, f"{type(exc).__name__}: {exc}"
    row["latency"] = time.monotonic() - row["sent"]
    return row


class HealthSampler(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.samples, self.failures, self.max_waiting = url, [], 0, 0
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.halt.is_set():
                t0 = time.monotonic()
                try:
                    r = client.get(self.url + "/health")
                    self.samples.append(time.monotonic() - t0)
                    queue = r.json().get("queue") or {}
                    self.max_waiting = max(self.max_waiting, queue.get("waiting", 0))
                except httpx.HTTPError:
                    self.failures += 1
                self.halt.wait(HEALTH_EVERY_S)


def run_level(url: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    jobs = workload(max(8, 2 * concurrency))
    lock = threading.Lock()
    queue = iter(jobs)
    rows: list[dict[str, Any]] = []

    def client() -> None:
        # One httpx client per thread, made before its first request is timed: making one per request (its
        # TLS context) took long enough on the busy machine to reorder requests sent together.
        with httpx.Client(timeout=600) as http:
            run_client(http)

    def run_client(http: httpx.Client) -> None:
        while True:
            with lock:
                job = next(queue, None)
            if job is None:
                return
            row = one_request(http, url, job, args.max_tokens)
            with lock:
                rows.append(row)
            if row.get("status") == 429:
                time.sleep(min(float(row.get("retry_after") or 1), args.max_retry_wait))

    health = HealthSampler(url)
    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    health.halt.set()
    health.join()
    return summarize(concurrency, rows, health, wall)


def summarize(c: int, rows: list[dict[str, Any]], health: HealthSampler, wall: float) -> dict[str, Any]:
    ok = [r for r in rows if r["ok"]]

    def pct(values: list[float]) -> dict[str, float | None]:
        return {"p50": percentile(values, 50) if values else None, "p95": percentile(values, 95) if values else None}

    # Did the model take requests in the order they were sent, streamed or not? A pair is out of order when
    # the later one's first token came first (streams: seen by the client; non-streamed: from the timings).
    streams = [r for r in ok if r["kind"] == "stream" and "ttft" in r]
    for r in streams:
        r["first_token_at"] = r["ttft"]
    model = sorted((r for r in ok if "first_token_at" in r), key=lambda r: r["sent"])
    inversions = sum(1 for a, b in itertools.combinations(model, 2)
                     if b["sent"] - a["sent"] > ORDER_GAP_S
                     and a["sent"] + a["first_token_at"] > b["sent"] + b["first_token_at"])
    return {
        "concurrency": c, "requests": len(rows), "ok": len(ok), "wall_s": round(wall, 1),
        "status_429": sum(r.get("status") == 429 for r in rows),
        "other_errors": sum(not r["ok"] and r.get("status") != 429 for r in rows),
        "latency_all": pct([r["latency"] for r in ok]),
        "latency_model": pct([r["latency"] for r in ok if r["kind"] == "complete"]),
        "ttft_stream": pct([r["ttft"] for r in streams]),
        "latency_off_topic": pct([r["latency"] for r in ok if r["kind"] == "off-topic"]),
        "abstained_off_topic": sum(bool(r.get("abstained")) for r in ok if r["kind"] == "off-topic"),
        "health": {**pct(health.samples), "max": max(health.samples) if health.samples else None,
                   "n": len(health.samples), "failures": health.failures},
        "max_waiting_seen": health.max_waiting, "order_inversions": inversions,
        "rows": rows,
    }


def disconnect_probe(url: str, phase: str, repeats: int) -> list[float]:
    """Seconds from a streaming client hanging up to /health showing the model free (phase: decode|prefill)."""
    out = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What does LoRA freeze?"}], "max_tokens": 400,
            "stream": True}
    for _ in range(repeats):
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
            pieces = 0
            for line in r.iter_lines():
                if phase == "prefill":
                    while httpx.get(url + "/health").json()["queue"].get("running", 1) == 0:
                        time.sleep(0.01)
                    break  # the model is reading the prompt: hang up now
                if line.startswith("data: {") and '"content":"' in line.replace(" ", "") and (pieces := pieces + 1) >= 3:
                    break
        t0 = time.monotonic()
        while httpx.get(url + "/health").json()["queue"].get("running", 0) > 0:
            time.sleep(0.01)
        out.append(time.monotonic() - t0)
    return out


def render(results: dict[str, Any]) -> str:
    title = (f"# `rag serve` under load ({results['max_tokens']}-token answers, bundled model, -k {results['top_k']}, "
             f"answer mode {results.get('answer_mode', 'configured')})")
    lines = [title, ""]
    for name, levels in results["servers"].items():
        lines += [f"## {name}", "", md_table(
            ["concurrency", "requests", "ok", "429", "other errors", "p50 / p95 all (s)",
             "p50 / p95 non-stream (s)", "p50 / p95 stream first token (s)", "p50 / p95 off-topic (s)",
             "/health p50 / p95 / max (s)", "most waiting", "pairs out of arrival order", "others' load before (cores)"],
            [[lv["concurrency"], lv["requests"], lv["ok"], lv["status_429"], lv["other_errors"],
              f"{fmt(lv['latency_all']['p50'])} / {fmt(lv['latency_all']['p95'])}",
              f"{fmt(lv['latency_model']['p50'])} / {fmt(lv['latency_model']['p95'])}",
              f"{fmt(lv['ttft_stream']['p50'])} / {fmt(lv['ttft_stream']['p95'])}",
              f"{fmt(lv['latency_off_topic']['p50'])} / {fmt(lv['latency_off_topic']['p95'])}",
              f"{fmt(lv['health']['p50'])} / {fmt(lv['health']['p95'])} / {fmt(lv['health']['max'])}",
              lv["max_waiting_seen"], lv["order_inversions"], lv.get("others_before")] for lv in levels]),
                  ""]
    if results.get("disconnect"):
        d = results["disconnect"]
        lines += ["Model busy after a streaming client hangs up (s, each try): mid-answer "
                  + ", ".join(fmt(x) for x in d["decode"]) + "; during prompt prefill "
                  + ", ".join(fmt(x) for x in d["prefill"]), ""]
    lines.append(f"Machine: {results['machine'].get('cpu', '?')}, {results['machine'].get('cpus')} cores, shared: "
                 "\"others' load before\" is what other processes used just before each row (the servers idle).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="1,4,20")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("-k", "--top-k", type=int, default=5)
    ap.add_argument("--max-retry-wait", type=float, default=2.0, help="cap on a client's wait after a 429 (s)")
    ap.add_argument("--index-dir", type=Path, default=None, help="default: the configured index (rag index)")
    ap.add_argument("--baseline-ref", default=None, help="also run the server of this git commit first")
    ap.add_argument("--disconnect-repeats", type=int, default=3)
    ap.add_argument("--name", default="load")
    ap.add_argument("--answer-mode", choices=["auto", "grounded", "free"], default=None,
                    help="the servers' answer mode (default: the configured one)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each level, wait up to this long for other processes to calm down (s)")
    args = ap.parse_args()
    if args.index_dir is None:
        from rag.config import load_settings

        args.index_dir = load_settings().index_dir
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    levels = [int(x) for x in args.levels.split(",")]
    results: dict[str, Any] = {"machine": machine_info(), "max_tokens": args.max_tokens, "top_k": args.top_k,
                               "answer_mode": args.answer_mode or "configured",
                               "max_queue": args.max_queue, "levels": levels, "servers": {}}
    whole, t_start = LoadMeter(), time.time()
    runs = ([(f"before: rag/server.py at {args.baseline_ref}", args.baseline_ref)] if args.baseline_ref else [])
    runs.append((f"now: rag serve --max-queue {args.max_queue}", None))
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            urls = {}
            for name, ref in runs:  # all servers up first, then each level runs on each in turn: the
                proc, urls[name] = start_server(args, ref, Path(tmp))  # machine's load drifts alike for both
                procs.append(proc)
                results["servers"][name] = []
            for c in levels:
                for name, _ in runs:
                    quiet = wait_for_quiet(max_wait=args.quiet_wait)
                    print(f"{name}: concurrency {c} ...", file=sys.stderr)
                    level = run_level(urls[name], c, args)
                    level["others_before"] = quiet["other_cores_before"]
                    results["servers"][name].append(level)
            if args.disconnect_repeats:
                url = urls[runs[-1][0]]
                results["disconnect"] = {"decode": disconnect_probe(url, "decode", args.disconnect_repeats),
                                         "prefill": disconnect_probe(url, "prefill", args.disconnect_repeats)}
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    finish_run(results, whole, t_start, render, args.name)


if __name__ == "__main__":
    main()
