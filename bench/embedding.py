"""Embedder backends on the course's chunks: speed, agreement and dense recall.

Backends, all on the bundled all-MiniLM-L6-v2 and the chunks of an index (their `embed_text`, as indexed):
  st-fp32      sentence-transformers, float32 (the reference vectors);
  st-bf16      sentence-transformers, bfloat16 weights;
  ours-bf16    rag/index/pooling.py on plain transformers, bfloat16: the default on an AVX512-BF16 CPU;
  ours-fp32    the same in float32 (the default elsewhere);
  ort-fp32     ONNX Runtime, the encoder + mean pooling + normalisation exported with torch.onnx;
  ort-int8     the same graph with dynamically quantised int8 weights (onnxruntime.quantization) - what
               sentence-transformers' ONNX "qint8" backends ship (that backend needs optimum-onnx, which
               pins transformers < 4.58; this project runs transformers 5, so the export is done here).
Each backend encodes all chunks `--rounds` times, interleaved, batch 16, longest first (best time kept);
ratios are to the default. Agreement: cosine of each chunk's vector to st-fp32's (min, mean). Recall: dense
retrieval of the dev questions over each backend's own vectors (evidence quotes, as `rag eval-retrieval`).
Fresh process: seconds to import and load the embedder and embed one question, ours vs sentence-transformers.

Run: python -m bench.embedding [--index-dir data/index] [--rounds 3]   (~3 min on the 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench import benchutil as bu
from rag.evaluation.retrieval import contains_evidence, load_questions, score_ranks
from rag.index.embeddings import bundled_model_path
from rag.ingest.chunking import Chunk

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = "ours-bf16"


def _onnx_encoders(path: Path, folder: Path) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """ort-fp32 and ort-int8 encoders of the bundled model (exported into `folder`)."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any) -> Any:
            tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    example = tok(["a short text", "another one, a little longer"], padding=True, return_tensors="pt")
    fp32, int8 = folder / "model.onnx", folder / "model_int8.onnx"
    torch.onnx.export(Pooled(), (example["input_ids"], example["attention_mask"]), str(fp32),
                      input_names=["ids", "mask"], output_names=["vec"], opset_version=17, dynamo=False,
                      dynamic_axes={"ids": {0: "b", 1: "s"}, "mask": {0: "b", 1: "s"}, "vec": {0: "b"}})
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)

    def encoder(file: Path) -> Callable[[list[str]], np.ndarray]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

        def encode(texts: list[str]) -> np.ndarray:
            order = np.argsort([-len(t) for t in texts])
            out = np.zeros((len(texts), 384), dtype=np.float32)
            for start in range(0, len(texts), 16):
                rows = order[start: start + 16]
                enc = tok([texts[i] for i in rows], padding=True, truncation=True, max_length=256, return_tensors="np")
                out[rows] = session.run(None, {"ids": enc["input_ids"].astype(np.int64),
                                               "mask": enc["attention_mask"].astype(np.int64)})[0]
            return out
        return encode

    return {"ort-fp32": encoder(fp32), "ort-int8": encoder(int8)}


def _encoders(path: Path, folder: Path) -> dict[str, Callable[[list[str]], np.ndarray]]:
    import torch
    from sentence_transformers import SentenceTransformer

    from rag.index.pooling import MeanPoolingEncoder, plain_mean_pooling

    window = plain_mean_pooling(path)
    out: dict[str, Callable[[list[str]], np.ndarray]] = {}
    for name, dtype in (("st-fp32", None), ("st-bf16", torch.bfloat16)):
        st = SentenceTransformer(str(path), device="cpu", **({"model_kwargs": {"dtype": dtype}} if dtype else {}))
        out[name] = lambda texts, st=st: st.encode(texts, batch_size=16, normalize_embeddings=True,
                                                   convert_to_numpy=True)
    for name, dtype in (("ours-bf16", torch.bfloat16), ("ours-fp32", None)):
        ours = MeanPoolingEncoder(path, window, dtype)
        out[name] = lambda texts, ours=ours: ours.encode(texts, batch_size=16)
    return {**out, **_onnx_encoders(path, folder)}


def _recall(vectors: np.ndarray, queries: np.ndarray, chunks: list[Chunk], questions: list[dict[str, Any]]) -> dict[str, Any]:
    ranks = []
    for q, vec in zip(questions, queries):
        top = np.argsort(-(vectors @ vec), kind="stable")[:10]
        rank = next((r for r, i in enumerate(top, start=1) if contains_evidence(chunks[i].text, q["evidence"])), None)
        ranks.append(rank)
    return score_ranks(ranks).to_dict()


_FRESH = {
    "ours (default)": "from rag.index.embeddings import Embedder\nEmbedder().encode_query('What does LoRA freeze?')",
    "sentence-transformers": ("from sentence_transformers import SentenceTransformer\n"
                              "from rag.index.embeddings import bundled_model_path\nimport torch\n"
                              "SentenceTransformer(str(bundled_model_path()), device='cpu', model_kwargs={'dtype': "
                              "torch.bfloat16}).encode(['What does LoRA freeze?'], normalize_embeddings=True)"),
}


def _fresh(runs: int) -> list[dict[str, Any]]:
    """Seconds for a new process to import torch + transformers, then load the embedder and embed a question
    (median of `runs`, interleaved); torch and transformers are imported first, as `rag ask` has them."""
    times: dict[str, list[float]] = {k: [] for k in _FRESH}
    for _ in range(runs):
        for name, code in _FRESH.items():
            script = ("import time, torch, transformers\nfrom transformers import AutoModel\nt = time.perf_counter()\n"
                      f"{code}\nprint(time.perf_counter() - t)")
            out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
            times[name].append(float(out.stdout.strip().splitlines()[-1]))
    return [{"embedder": k, "load_and_first_query_s": statistics.median(v)} for k, v in times.items()]


def render(r: dict[str, Any]) -> str:
    rows = [(b["backend"], b["seconds"], b["chunks_per_s"], b["speed_vs_default"], b["cos_min"], b["cos_mean"],
             {True: "yes", False: "no", None: ""}[b["identical_to_st_same_dtype"]], b["recall"]["recall@1"], b["recall"]["recall@5"], b["recall"]["recall@10"], b["recall"]["mrr@10"])
            for b in r["backends"]]
    md = [f"## Embedder backends ({r['chunks']} chunks, batch 16, best of {r['rounds']} interleaved rounds, "
          f"{r['threads']} threads; dense recall on {r['questions']} dev questions)", "",
          bu.md_table(["backend", "encode s", "chunks/s", f"speed / {DEFAULT}", "cosine to st-fp32 min",
                       "cosine mean", "bit-identical to st, same dtype", "recall@1", "recall@5", "recall@10", "MRR@10"], rows), "",
          "## A fresh process: load the embedder and embed one question (torch + transformers already imported)", "",
          bu.md_table(["embedder", "seconds (median)"], [(f["embedder"], f["load_and_first_query_s"]) for f in r["fresh"]]),
          "", f"Other processes kept {r['load_whole_run']['other_cores']:.2f} of the cores busy over the whole run."]
    return "\n".join(md)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index-dir", type=Path, default=ROOT / "data" / "index")
    ap.add_argument("--questions", type=Path, default=ROOT / "eval" / "dev_questions.jsonl")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fresh-runs", type=int, default=3)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    t_start, whole = time.time(), bu.LoadMeter()
    generation = (args.index_dir / "CURRENT").read_text().strip()
    chunks = [Chunk.from_record(json.loads(line))
              for line in (args.index_dir / generation / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [c.embed_text for c in chunks]
    questions = [q for q in load_questions(args.questions) if q.get("evidence")]
    with tempfile.TemporaryDirectory() as tmp:
        encoders = _encoders(bundled_model_path(), Path(tmp))
        best: dict[str, float] = {k: float("inf") for k in encoders}
        vectors: dict[str, np.ndarray] = {}
        names = list(encoders)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                t = time.perf_counter()
                vectors[name] = encoders[name](texts)
                best[name] = min(best[name], time.perf_counter() - t)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        queries = {name: enc([q["question"] for q in questions]) for name, enc in encoders.items()}
    ref = vectors["st-fp32"]
    backends = []
    for name in names:
        cos = np.sum(vectors[name] * ref, axis=1)
        backends.append({"backend": name, "seconds": best[name], "chunks_per_s": len(texts) / best[name],
                         "speed_vs_default": best[DEFAULT] / best[name], "cos_min": float(cos.min()),
                         "cos_mean": float(cos.mean()),
                         "identical_to_st_same_dtype": None,
                         "recall": _recall(vectors[name], queries[name], chunks, questions)})
    for a, b in (("ours-bf16", "st-bf16"), ("ours-fp32", "st-fp32")):
        next(x for x in backends if x["backend"] == a)["identical_to_st_same_dtype"] = bool(
            np.array_equal(vectors[a], vectors[b]))
    results = {"machine": bu.machine_info(), "chunks": len(texts), "questions": len(questions), "rounds": args.rounds,
               "threads": torch.get_num_threads(), "backends": backends, "fresh": _fresh(args.fresh_runs)}
    bu.finish_run(results, whole, t_start, render, "embedding" + (f"_{args.tag}" if args.tag else ""))


if __name__ == "__main__":
    main()
