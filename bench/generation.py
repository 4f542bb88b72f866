"""Local generation speed: our decoders vs llama.cpp vs plain transformers, a fresh `rag ask`, and `rag serve`
under concurrent load, in one run.

Part 1, engines: the same 5-passage RAG prompt (token ids, identical for everyone) goes to each contender,
which must write exactly --tokens new tokens (EOS masked), greedy with repetition penalty 1.1:

* transformers          `model.generate` on the bundled model (fp32): what LocalGenerator did before the ONNX decoder
* ours-int4 / ours-int8 LocalGenerator's quantised ONNX decoders (with prompt lookup)
* ours-fp32plain-off    the fp32 ONNX decoder before 4-bit packing (rag/generation/decoder/packing.py), one token per pass
* ours-fp32plain        ... speculating with prompt lookup and the int8 draft model (the default before packing)
* ours-fp32-off         the fp32 ONNX decoder, exact 4-bit blocks packed, one token per pass
* ours-fp32-lookup      ... speculating with prompt lookup only
* ours-fp32-int8        ... with prompt lookup and the int8 draft model (RAG_DRAFT=int8)
* ours-fp32-int4        ... with prompt lookup and the int4 draft model (RAG_DRAFT=int4)
* ours-fp32             ... with the default draft (rag/generation/decoder/onnx.py DEFAULT_DRAFT)
* ours-fp32+bf16        ... the prompt read in bf16 (CPU autocast; the setting prefill_dtype)
* ours-packed-a8        the same exact 4-bit blocks against 8-bit activations (the decoder "packed-a8")
* ours-packed-a8+bf16   ... with the prompt read in bf16
* llama.cpp             llama-cpp-python on the same Q4_1 GGUF (bench extra; skipped with a note when missing)
* ort-genai-int4        (--all) onnxruntime-genai alone on our int4 decoder: why the prefill stays in transformers

Each contender lives in its own worker process (a runtime's idle threads never sit in another's process)
and loads once; then every round runs each contender once, in a rotated order, on a prompt whose first
token differs per round (so no engine can reuse a cached prefix). Reported: medians of prefill seconds
(time to the first new token) and decode tokens/s (tokens 2..N over their time), and the median of the
per-round ratios to transformers (robust to load that drifts between rounds on a shared machine), plus
how many tokens equal transformers' greedy tokens on round 0's prompt.

Part 2, fidelity: every engine answers the RAG prompts of eval/dev_questions.jsonl greedily (EOS allowed):
share of answers identical to transformers', token F1 against transformers' text and against the reference.

Part 2b, warm grounded answer: the product's default answer (five passages, the quote chosen, then the
answer) in a warm process, per path (--warm-paths), on interleaved dev questions: seconds to the first
answer piece and to the end (medians).

Part 3, cold start: a fresh `rag ask QUESTION` process per run (retrieval, generation of up to
--ask-tokens tokens, attribution), after one untimed run per path that builds its caches, interleaved
between the paths of --cold-paths ("transformers", "default" = no RAG_* variable set, or a path of
bench.generation_quality.PATHS given as RAG_DECODER / RAG_PREFILL_DTYPE): seconds from process start to the
first answer byte on stdout and to exit (medians). --cold-threads sets OMP_NUM_THREADS for these processes
(default 0: unset, the product's own default, as a user runs it).

Part 4, server: a real `rag serve` on 127.0.0.1 per answer mode and path (--server-paths; --server-baseline
adds plain transformers: one answer at a time); at each concurrency C, C client threads share max(8, 2C)
streamed dev questions (fresh ones per level); answers/s, completion tokens/s, time to the first piece,
and the longest gap between two pieces of one stream.

Part 5, quality: each path of --paths answers the independent courses' own quizzes
(bench/generation_quality.py): accuracy per course and pooled, and each path minus fp32 with its paired 95%
interval and verdict (a faster path passes when no interval lies wholly below zero).

    python -m bench.generation [--rounds 5] [--tokens 64] [--threads 1] [--index-dir DIR] [--all]
                               [--fidelity 29] [--warm-paths fp32,default] [--cold-runs 3]
                               [--cold-paths transformers,fp32,default] [--server-levels 1,4,8]
                               [--server-paths default] [--server-baseline] [--server-answer-mode grounded,free]
                               [--server-tokens 64] [--paths fp32,bf16-prefill,...] [--limit 40]
                               [--only engines,warm,cold,server,quality] [--quick]

Writes bench/results/generation.json and generation.md (or generation_<--tag>.*). The kept results:
generation.* (parts 1-2, `--only engines`), generation_cold_server.* (parts 2b-4, `--only warm,cold,server
--tag cold_server`) and generation_quality.* (part 5 alone: `python -m bench.generation_quality`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.benchutil import ROOT, LoadMeter, finish_run, machine_info
from bench.generation_report import render
from bench.generation_timing import QUESTION, cold_part, server_part, warm_part

ENGINES = ["transformers", "ours-int4", "ours-int8", "ours-fp32plain-off", "ours-fp32plain", "ours-fp32-off",
           "ours-fp32-lookup", "ours-fp32-int8", "ours-fp32-int4", "ours-fp32", "ours-fp32+bf16", "ours-packed-a8",
           "ours-packed-a8+bf16", "llama.cpp"]


# ------------------------------------------------------------------------------------------ workers


def _worker(kind: str, threads: int) -> None:
    """Load one contender, then answer JSON commands {"ids": [...], "n": N} on stdin, one per line."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    run = _make_runner(kind, threads)
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        prefill, decode_s, tokens = run(cmd["ids"], cmd["n"], cmd.get("free", False))
        print(json.dumps({"prefill_s": prefill, "decode_s": decode_s, "tokens": tokens}), flush=True)


def _hf_style(generate: Any) -> Any:
    """Time a `model.generate`-like callable: a stopping criterion notes when each new token exists."""
    import torch
    from transformers import StoppingCriteria

    def run(ids: list[int], n: int, free: bool = False) -> tuple[float, float, list[int]]:
        stamps: list[float] = []

        class Stamp(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
                stamps.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        x = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                           min_new_tokens=0 if free else n, do_sample=False, repetition_penalty=1.1,
                           pad_token_id=2, stopping_criteria=[Stamp()])
        return stamps[0] - t0, stamps[-1] - stamps[0], out[0, len(ids):].tolist()

    return run


def _make_runner(kind: str, threads: int) -> Any:
    from rag.generation.decoder import PRECISIONS
    from rag.generation.local import LocalGenerator

    if kind == "transformers":
        return _hf_style(LocalGenerator("bundled", decoder="transformers")._loaded.model.generate)
    if kind.startswith("ours-fp32plain"):  # ours-fp32plain[-DRAFT]: the fp32 decoder without 4-bit packing
        from rag.generation.decoder import OnnxDecoder, build_onnx_decoder, resolve_draft

        gen = LocalGenerator("bundled", decoder="transformers", prefill_dtype="float32")
        model_dir = gen.model_dir
        draft = resolve_draft(kind.split("-")[2] if kind.count("-") == 2 else "auto", "fp32")
        decoder = OnnxDecoder(gen._loaded.model.config, build_onnx_decoder(model_dir, "fp32", pack=False), threads,
                              build_onnx_decoder(model_dir, draft) if draft in ("int8", "int4") else None,
                              speculate=draft != "off")
        return _hf_style(functools.partial(decoder.generate, loaded=gen._loaded))
    if kind.startswith("ours-"):  # ours-PRECISION[-DRAFT][+bf16]: LocalGenerator's decoder with that proposer
        name, _, prefill = kind.removeprefix("ours-").partition("+")
        precision = next(p for p in sorted(PRECISIONS, key=len, reverse=True) if name.startswith(p))
        draft = name[len(precision):].lstrip("-") or "auto"
        gen = LocalGenerator("bundled", decoder=precision, draft=draft,
                             prefill_dtype="bfloat16" if prefill == "bf16" else "float32")
        return _hf_style(functools.partial(gen._decoder.generate, loaded=gen._loaded))
    if kind == "ort-genai-int4":
        import onnxruntime_genai as og

        onnx_dir = LocalGenerator("bundled", decoder="int4")._decoder.onnx_dir
        config = og.Config(str(onnx_dir))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        model = og.Model(config)

        def run_og(ids: list[int], n: int, free: bool = False) -> tuple[float, float, list[int]]:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False,
                                      repetition_penalty=1.1)
            gen = og.Generator(model, params)
            t0 = time.perf_counter()
            gen.append_tokens(ids)
            gen.generate_next_token()
            t1 = time.perf_counter()
            out = [int(gen.get_next_tokens()[0])]
            while not gen.is_done():
                gen.generate_next_token()
                out.append(int(gen.get_next_tokens()[0]))
            return t1 - t0, time.perf_counter() - t1, out

        return run_og
    if kind == "llama.cpp":
        import llama_cpp
        import llama_cpp.llama as llama_module

        from rag.generation.models import bundled_gguf_path

        # ggml's AMX kernels crash on Q4_1 on this CPU (SIGSEGV in ggml_backend_amx_mul_mat, llama.cpp
        # issue 20824); extra buffer types (AMX, repacking) off = the plain AVX-512 kernels.
        default_params = llama_cpp.llama_model_default_params

        def no_extra_buffers() -> Any:
            params = default_params()
            params.use_extra_bufts = False
            return params

        llama_module.llama_cpp.llama_model_default_params = no_extra_buffers
        llm = llama_cpp.Llama(model_path=str(bundled_gguf_path()), n_ctx=4096, n_batch=512, n_threads=threads,
                              n_threads_batch=threads, verbose=False)

        def run_llama(ids: list[int], n: int, free: bool = False) -> tuple[float, float, list[int]]:
            llm.reset()  # no prefix reuse between rounds
            out: list[int] = []
            t0 = time.perf_counter()
            t1 = 0.0
            for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.1):
                if not out:
                    t1 = time.perf_counter()
                out.append(int(token))
                if len(out) == n or (free and llm.token_eos() == token):
                    break
            return t1 - t0, time.perf_counter() - t1, out

        return run_llama
    raise SystemExit(f"unknown engine {kind}")


class Worker:
    """A contender in its own process (see _worker)."""

    def __init__(self, kind: str, threads: int) -> None:
        self.kind = kind
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.generation", "--worker", kind, "--threads",
                                      str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            self.close()
            raise RuntimeError(err[-1] if err else "worker exited")
        self.load_s = json.loads(line)["load_s"]

    def run(self, ids: list[int], n: int, free: bool = False) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"ids": ids, "n": n, "free": free}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker died: {self.proc.stderr.read()[-500:]}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------------------------------ part 1


def prompt_ids(index_dir: Path | None, questions: list[str]) -> tuple[list[list[int]], Any]:
    """The bundled model's token ids of the 5-passage RAG prompt of each question (real retrieval)."""
    from transformers import AutoTokenizer

    from rag.answering.prompts import rag_messages
    from rag.api import open_retriever
    from rag.config import load_settings
    from rag.generation.spec import resolve_model

    settings = load_settings(index_dir=index_dir) if index_dir else load_settings()
    retriever = open_retriever(settings)
    tok = AutoTokenizer.from_pretrained(str(resolve_model("bundled").local_dir()), local_files_only=True)
    out = []
    for q in questions:
        messages = rag_messages(q, retriever.search(q, k=5), small_model=True)
        out.append(list(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]))
    return out, tok


def engines_part(args: argparse.Namespace, results: dict[str, Any]) -> None:
    rows_q = [json.loads(line) for line in (ROOT / "eval" / "dev_questions.jsonl").read_text().splitlines()
              if line.strip()][: args.fidelity]
    prompts, tok = prompt_ids(args.index_dir, [QUESTION] + [r["question"] for r in rows_q])
    ids = prompts[0]
    results["prompt_tokens"] = len(ids)
    kinds = [k.strip() for k in args.engines.split(",") if k.strip()] if args.engines else list(ENGINES)
    kinds += ["ort-genai-int4"] if args.all else []
    if "transformers" not in kinds:
        kinds.insert(0, "transformers")  # every ratio is to it
    workers: dict[str, Worker] = {}
    results["skipped"] = {}
    for kind in kinds:
        try:
            workers[kind] = Worker(kind, args.threads)
        except (RuntimeError, OSError) as e:
            results["skipped"][kind] = str(e)[:300]
            print(f"skipping {kind}: {str(e)[:200]}", file=sys.stderr)
    if "transformers" not in workers:
        raise SystemExit("the transformers baseline did not start: " + results["skipped"].get("transformers", ""))
    names = list(workers)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    meter = LoadMeter()
    try:
        for w in workers.values():  # warm-up, not counted (first-call allocations, lazy kernels)
            w.run([99] + ids, 4)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for kind in order:
                runs[kind].append(workers[kind].run([100 + r] + ids, args.tokens))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        answers: dict[str, list[list[int]]] = {k: [] for k in names}
        for q_ids in prompts[1:]:  # part 3: free greedy answers (EOS allowed) to the dev questions
            for kind in names:
                answers[kind].append(workers[kind].run(q_ids, args.fidelity_tokens, free=True)["tokens"])
    finally:
        for w in workers.values():
            w.close()
    results["load_engines"] = meter.stop()
    base = runs["transformers"]
    rows = []
    for kind in names:
        rs = runs[kind]
        decode = [(len(x["tokens"]) - 1) / x["decode_s"] for x in rs]
        base_decode = [(len(x["tokens"]) - 1) / x["decode_s"] for x in base]
        same = 0
        for a, b in zip(rs[0]["tokens"], base[0]["tokens"]):
            if a != b:
                break
            same += 1
        rows.append({
            "engine": kind, "load_s": workers[kind].load_s,
            "prefill_s": statistics.median(x["prefill_s"] for x in rs),
            "decode_tok_s": statistics.median(decode),
            "prefill_ratio": statistics.median(x["prefill_s"] / b["prefill_s"] for x, b in zip(rs, base)),
            "decode_ratio": statistics.median(d / b for d, b in zip(decode, base_decode)),
            "same_prefix": same, "tokens": len(rs[0]["tokens"]),
            "text_round0": tok.decode(rs[0]["tokens"], skip_special_tokens=True),
            "samples": rs,
        })
    results["engines"] = rows
    if rows_q:
        from rag.evaluation.metrics import token_f1

        gold = [r["answer"] for r in rows_q]
        ref = [tok.decode(a, skip_special_tokens=True) for a in answers["transformers"]]
        fid = []
        for kind in names:
            texts = [tok.decode(a, skip_special_tokens=True) for a in answers[kind]]
            fid.append({"engine": kind, "questions": len(texts),
                        "same_text": sum(t == r for t, r in zip(texts, ref)) / len(texts),
                        "f1_vs_transformers": statistics.mean(token_f1(t, r) for t, r in zip(texts, ref)),
                        "f1_vs_gold": statistics.mean(token_f1(t, g) for t, g in zip(texts, gold)),
                        "texts": texts})
        results["fidelity"] = fid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help="threads for every engine (default 1: on a shared "
                    "2-core machine 2 OpenMP threads collapse whenever another process runs)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--index-dir", type=Path, default=None)
    ap.add_argument("--all", action="store_true", help="also onnxruntime-genai alone")
    ap.add_argument("--engines", default="", help=f"part 1's contenders, comma-separated (default all: {', '.join(ENGINES)}; "
                    "transformers always runs: every ratio is to it)")
    ap.add_argument("--fidelity", type=int, default=29, help="dev questions answered freely by every engine "
                    "(0 = skip)")
    ap.add_argument("--fidelity-tokens", type=int, default=64)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--cold-threads", type=int, default=0, help="OMP_NUM_THREADS of the fresh `rag ask` processes "
                    "(default 0: unset, the product's default)")
    ap.add_argument("--ask-tokens", type=int, default=256)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--cold-only", action="store_true", help="part 3 only (fresh `rag ask` per decoder)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 16 tokens, 1 cold run each")
    ap.add_argument("--server-levels", default="1,4,8", help="concurrency levels of part 4 ('' = skip)")
    ap.add_argument("--server-tokens", type=int, default=64)
    ap.add_argument("--server-baseline", action="store_true", help="part 4 also with RAG_DECODER=transformers")
    ap.add_argument("--server-answer-mode", default="grounded,free",
                    help="part 4's answer modes, comma-separated (grounded: the product's default)")
    ap.add_argument("--cold-paths", default="transformers,fp32,default",
                    help="part 3's paths: default, transformers, or of bench.generation_quality.PATHS")
    ap.add_argument("--warm-paths", default="fp32,default", help="part 2b's paths (as --cold-paths)")
    ap.add_argument("--warm-rounds", type=int, default=5)
    ap.add_argument("--server-paths", default="default", help="part 4's paths (as --cold-paths)")
    from bench.generation_quality import add_arguments as quality_arguments

    quality_arguments(ap)
    ap.add_argument("--only", default="", help="comma-separated parts to run: engines,warm,cold,server,quality "
                    "(default all)")
    ap.add_argument("--tag", default="", help="results file suffix")
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.threads)
        return
    if args.quick:
        args.rounds, args.tokens, args.cold_runs, args.fidelity = 2, 16, 1, min(args.fidelity, 3)
    t_start = time.time()
    whole = LoadMeter()
    results: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "machine": machine_info()}
    only = set(filter(None, args.only.split(","))) or {"engines", "warm", "cold", "server", "quality"}
    if args.cold_only:
        only = {"cold"}
    if args.skip_cold:
        only.discard("cold")
    if "engines" in only:
        engines_part(args, results)
    if "warm" in only:
        warm_part(args, results)
    if "cold" in only:
        cold_part(args, results)
    if "server" in only and args.server_levels:
        server_part(args, results)
    if "quality" in only:
        from bench.generation_quality import run_quality

        results["quality"], results["quality_md"] = run_quality(args)
    finish_run(results, whole, t_start, render, "generation" + (f"_{args.tag}" if args.tag else ""))


if __name__ == "__main__":
    main()
