"""Generation speed: time to first token and decode tokens/s for a 5-passage RAG prompt.

Compares, in one process and on the same prompt: plain `model.generate` (baseline), our
LocalGenerator.stream (same model, same greedy settings), and the HTTP backend through a real
`rag serve` on 127.0.0.1 (whole RAG loop: retrieval + prompt + generation + attribution).
Also: model load time cold (GGUF -> safetensors conversion) and warm (cache), peak RSS.

    python bench/generation.py [--quick] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_stream(pieces_iter):
    t0 = time.perf_counter()
    first = None
    text = []
    for piece in pieces_iter:
        if first is None:
            first = time.perf_counter() - t0
        text.append(piece)
    return first, time.perf_counter() - t0, "".join(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    reps = 1 if args.quick else args.repeats
    import torch
    from transformers import TextIteratorStreamer

    from rag.api import open_retriever
    from rag.config import load_settings
    from rag.generation.base import GenerationParams
    from rag.generation.local import LocalGenerator
    from rag.generation.http import OpenAIGenerator
    from rag.generation.models import bundled_gguf_path, convert_gguf
    from rag.answering.prompts import rag_messages

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        convert_gguf(bundled_gguf_path(), tmp)
        results["load_cold_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = LocalGenerator("bundled")  # default cache: converted already by earlier runs
    results["load_warm_s"] = time.perf_counter() - t0

    settings = load_settings()
    retriever = open_retriever(settings)
    hits = retriever.search("What is the difference between RAG and fine-tuning?", k=5)
    messages = rag_messages("What is the difference between RAG and fine-tuning?", hits, small_model=True)
    prompt_tokens = gen.count_tokens(messages)
    results["prompt_tokens"] = prompt_tokens
    params = GenerationParams(max_new_tokens=args.tokens, temperature=0.0, repetition_penalty=1.1)
    model, tok = gen._loaded.model, gen.tokenizer
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def plain():
        import threading

        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        th = threading.Thread(target=lambda: model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False,
                                                            repetition_penalty=1.1, streamer=streamer,
                                                            pad_token_id=tok.pad_token_id))
        with torch.inference_mode():
            th.start()
            out = timed_stream(streamer)
            th.join()
        return out

    rows = {"plain model.generate": [], "LocalGenerator.stream": []}
    for _ in range(reps):
        rows["plain model.generate"].append(plain())
        rows["LocalGenerator.stream"].append(timed_stream(gen.stream(messages, params)))

    # HTTP backend through a real `rag serve`
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "serve", "--port", str(port),
                             "--max-tokens", str(args.tokens)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        http = OpenAIGenerator(url + "/v1", model_name="course-rag")
        rows["rag serve via HTTP (whole RAG loop)"] = []
        for _ in range(reps):
            rows["rag serve via HTTP (whole RAG loop)"].append(timed_stream(http.stream(
                [{"role": "user", "content": "What is the difference between RAG and fine-tuning?"}], params)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    base_ttft = statistics.median(r[0] for r in rows["plain model.generate"])
    base_total = statistics.median(r[1] for r in rows["plain model.generate"])
    table = []
    for name, runs in rows.items():
        ttft = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        n_tok = statistics.median(len(tok(r[2], add_special_tokens=False)["input_ids"]) for r in runs)
        decode = (n_tok - 1) / max(total - ttft, 1e-9)
        table.append({"backend": name, "ttft_s": ttft, "total_s": total, "tokens": n_tok, "decode_tok_s": decode,
                      "ttft_ratio": ttft / base_ttft, "total_ratio": total / base_total})
    results["rows"] = table
    results["peak_rss_mb"] = peak_mb()
    print(f"prompt: {prompt_tokens} tokens (5 passages), {args.tokens} new tokens, greedy, median of {reps}")
    print(f"model load: cold (GGUF conversion) {results['load_cold_s']:.1f}s, warm (safetensors cache) "
          f"{results['load_warm_s']:.2f}s; peak RSS {results['peak_rss_mb']:.0f} MB")
    print("| backend | TTFT s | total s | tokens | decode tok/s | TTFT ratio | total ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['backend']} | {r['ttft_s']:.2f} | {r['total_s']:.2f} | {r['tokens']:.0f} | "
              f"{r['decode_tok_s']:.1f} | {r['ttft_ratio']:.2f} | {r['total_ratio']:.2f} |")
    out = ROOT / "bench" / "results" / "generation.json"
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
