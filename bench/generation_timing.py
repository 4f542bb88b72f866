"""Parts 2b-4 of bench.generation: the product's answers timed as a user meets them, per path (a way to run
the model: bench.generation_quality.PATHS, "default" = nothing set, "transformers"): a grounded answer in a
warm process, a fresh `rag ask`, and `rag serve` under concurrent load. bench/generation.py documents the
parts and runs them."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.benchutil import ROOT

QUESTION = "What is the difference between RAG and fine-tuning?"
#: The variables a path sets; "default" leaves them unset (the caller's other RAG_* variables, e.g. RAG_MODEL,
#: apply to every path).
PATH_KNOBS = ("RAG_DECODER", "RAG_DRAFT", "RAG_PREFILL_DTYPE")


# ------------------------------------------------------------------------------------------ part 3


def _paths(names: str) -> dict[str, dict[str, str]]:
    """{name: RAG_* environment} of the comma-separated paths: "default" (nothing set: what a user gets),
    "transformers" (plain `model.generate`, prompts in float32), or a path of bench.generation_quality.PATHS."""
    from bench.generation_quality import PATHS, path_env

    known = {"default": {}, "transformers": {"RAG_DECODER": "transformers", "RAG_PREFILL_DTYPE": "float32"},
             **{n: path_env(v) for n, v in PATHS.items()}}
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"unknown path(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    return {n: known[n] for n in chosen}


def cold_part(args: argparse.Namespace, results: dict[str, Any]) -> None:
    rag = str(Path(sys.executable).parent / "rag")
    cmd = [rag, "ask", QUESTION, "--max-new-tokens", str(args.ask_tokens)]
    if args.index_dir:
        cmd += ["--index-dir", str(args.index_dir)]
    paths = _paths(args.cold_paths)
    runs: dict[str, list[dict[str, float]]] = {d: [] for d in paths}
    clean = {k: v for k, v in os.environ.items() if k not in PATH_KNOBS}
    for d, env in paths.items():  # untimed: builds what a first run builds once (conversions, decoders)
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       env={**clean, **env, "HF_HUB_OFFLINE": "1"})
    for r in range(args.cold_runs):
        for d in list(paths) if r % 2 == 0 else list(paths)[::-1]:
            env = {**clean, **paths[d], "HF_HUB_OFFLINE": "1"}
            env.pop("OMP_NUM_THREADS", None)
            if args.cold_threads:
                env["OMP_NUM_THREADS"] = str(args.cold_threads)
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            first = proc.stdout.read(1)
            t_first = time.perf_counter() - t0
            rest = proc.stdout.read()
            proc.wait()
            total = time.perf_counter() - t0
            if proc.returncode != 0 or not first:
                raise SystemExit(f"`rag ask` failed on the path {d} ({env}; exit {proc.returncode})")
            answer = (first + rest).decode("utf-8", "replace").split("\nSources:")[0].split("\nNearest passages:")[0]
            runs[d].append({"first_byte_s": t_first, "total_s": total, "answer_chars": len(answer.strip())})
        print(f"cold run {r + 1}/{args.cold_runs} done", file=sys.stderr)
    results["cold"] = [{"decoder": d, "first_byte_s": statistics.median(x["first_byte_s"] for x in runs[d]),
                        "total_s": statistics.median(x["total_s"] for x in runs[d]),
                        "answer_chars": statistics.median(x["answer_chars"] for x in runs[d]), "samples": runs[d]}
                       for d in paths]


def warm_part(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Time to the first piece of a grounded answer (the product's default: five passages, quote chosen, then
    the answer) in a warm process: each path's pipeline loaded once, then the dev questions asked in
    interleaved rounds (a new question each time, so no prompt is read from the prompt cache)."""
    from rag.api import get_generator, make_pipeline, open_retriever
    from rag.config import load_settings

    questions = [json.loads(line)["question"] for line in (ROOT / "eval" / "dev_questions.jsonl").read_text()
                 .splitlines() if line.strip()]
    paths = _paths(args.warm_paths)
    base = load_settings(index_dir=args.index_dir) if args.index_dir else load_settings()
    retriever = open_retriever(base)
    pipes = {}
    for name, env in paths.items():
        settings = base.model_copy(update={k.removeprefix("RAG_").lower(): v for k, v in env.items()})
        pipes[name] = make_pipeline(settings, retriever=retriever, generator=get_generator(settings))
        "".join(pipes[name].ask(questions[-1]))  # warm-up: first-call allocations, decoder opened
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in paths}
    for r in range(args.warm_rounds):
        names = list(paths)[r % len(paths):] + list(paths)[: r % len(paths)]
        for name in names:
            q = questions[(r * len(paths) + names.index(name)) % (len(questions) - 1)]
            t0 = time.perf_counter()
            first = None
            pieces = []
            for piece in pipes[name].ask(q):
                if first is None and piece.strip():
                    first = time.perf_counter() - t0
                pieces.append(piece)
            runs[name].append({"first_piece_s": first if first is not None else float("nan"),
                               "total_s": time.perf_counter() - t0, "chars": len("".join(pieces))})
        print(f"warm round {r + 1}/{args.warm_rounds} done", file=sys.stderr)
    results["warm"] = [{"path": n, "first_piece_s": statistics.median(x["first_piece_s"] for x in runs[n]),
                        "total_s": statistics.median(x["total_s"] for x in runs[n]), "samples": runs[n]}
                       for n in paths]


# ------------------------------------------------------------------------------------------ part 4


def _stream_one(client: Any, url: str, question: str, max_tokens: int) -> dict[str, Any]:
    """One streamed chat completion: seconds to the first content piece, the longest gap between pieces,
    completion tokens (the final usage chunk), total seconds."""
    body = {"model": "course-rag", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    sent = time.monotonic()
    row: dict[str, Any] = {"ok": False, "tokens": 0, "ttft": None, "max_gap": 0.0}
    last = None
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        row["status"] = r.status_code
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                row["tokens"] = event["usage"].get("completion_tokens", 0)
            choices = event.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                now = time.monotonic()
                if last is None:
                    row["ttft"] = now - sent
                else:
                    row["max_gap"] = max(row["max_gap"], now - last)
                last = now
        row["ok"] = r.status_code == 200
    row["latency"] = time.monotonic() - sent
    return row


def server_part(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """`rag serve` (the default decoder: batched) under closed-loop load at each concurrency level: C client
    threads share max(8, 2C) streamed on-topic dev questions; throughput = requests (and completion tokens)
    per second of wall time; ratios to concurrency 1. `RAG_DECODER=transformers` (one generation at a time)
    runs the same levels for comparison when --server-baseline is given."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from bench.load import start_server

    questions = [json.loads(line)["question"] for line in (ROOT / "eval" / "dev_questions.jsonl").read_text()
                 .splitlines() if line.strip()]
    levels = [int(x) for x in args.server_levels.split(",")]
    paths = _paths(args.server_paths + (",transformers" if args.server_baseline else ""))
    out = []
    caller = {k: os.environ.pop(k) for k in PATH_KNOBS if k in os.environ}  # "default" = none of them set
    for mode, decoder in [(m, d) for m in args.server_answer_mode.split(",") for d in paths]:
        saved = {k: os.environ.get(k) for k in paths[decoder]}
        os.environ.update(paths[decoder])
        conf = argparse.Namespace(index_dir=args.index_dir or ROOT / "data" / "index", max_tokens=args.server_tokens,
                                  max_queue=64, top_k=5, answer_mode=mode)
        with tempfile.TemporaryDirectory() as tmp:
            proc, url = start_server(conf, None, Path(tmp))
            try:
                with httpx.Client(timeout=600) as client:
                    _stream_one(client, url, questions[-1], 8)  # warm-up (first-call allocations)
                    base, used = None, 0
                    for c in levels:  # fresh questions per level (no prompt-cache hits across levels)
                        jobs = [questions[(used + i) % len(questions)] for i in range(max(8, 2 * c))]
                        used += len(jobs)
                        t0 = time.monotonic()
                        with ThreadPoolExecutor(c) as pool:
                            rows = list(pool.map(lambda q: _stream_one(client, url, q, args.server_tokens), jobs))
                        wall = time.monotonic() - t0
                        ok = [r for r in rows if r["ok"]]
                        row = {"answer_mode": mode, "decoder": decoder, "concurrency": c, "requests": len(rows),
                               "ok": len(ok), "wall_s": wall, "req_per_s": len(ok) / wall,
                               "tok_per_s": sum(r["tokens"] for r in ok) / wall,
                               "ttft_p50_s": statistics.median(r["ttft"] for r in ok if r["ttft"] is not None),
                               "max_gap_s": max(r["max_gap"] for r in ok)}
                        base = base or row
                        row["throughput_ratio"] = row["req_per_s"] / base["req_per_s"]
                        out.append(row)
                        print(f"server {mode} {decoder} concurrency {c}: {row['req_per_s']:.3f} req/s", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
    os.environ.update(caller)
    results["server"] = out
