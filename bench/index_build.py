"""Index build benchmark: our pipeline vs plain sentence-transformers encode vs LangChain FAISS.

What it measures, on corpus/ (copied to a temp dir) and on an N-times larger copy (default 20x: every
file copied into copy00/ .. copy19/, so the text repeats but sources differ and every chunk is embedded):

  a) ours: rag.api.index_corpus into a fresh temp index dir = read + chunk + embed + FAISS + BM25 + atomic
     save, from scratch, with the shipped defaults (dtype "auto" = bf16 on an AVX512-BF16 CPU);
  b) plain SentenceTransformer(path).encode(chunk.embed_text for the same chunks, batch_size=16 as ours,
     normalize_embeddings=True), fp32 and bf16 -> pipeline overhead ratio = ours / plain, per dtype;
  c) LangChain FAISS.from_documents(docs, HuggingFaceEmbeddings(bundled path, normalize)) on the same
     chunks -> speed ratio LangChain / ours (LangChain default = fp32, batch 32; a bf16 LangChain row too);
  d) recall@5 (and @1, @10, MRR@10) on eval/dev_questions.jsonl, a hit being a retrieved chunk whose text
     contains an evidence quote (rag.evaluate.contains_evidence): LangChain's store vs ours dense/hybrid/bm25;
  e) bf16 vs fp32: plain encode speed ratio, min/mean cosine between the two embeddings of each chunk,
     and a small plain-encode batch-size sweep;
  f) peak RSS (VmHWM) of each pipeline, each run once in its own fresh subprocess;
  g) incremental re-index after editing one file (append a line; edit its first paragraph) and the
     no-change re-run, as a fraction of the full build, on both corpora.

Timings of a)-c) and e) run in this one process, interleaved round by round (order rotated), so machine
noise hits every pipeline alike; ratios are given as best/best and as the median of same-round ratios.
Before each timed run the script waits (up to 90 s; --no-wait to skip) for other processes to go quiet,
and it records how many cores other processes used during each run ("other cores"): this machine is
shared, and a busy neighbour slows embedding 2-4x. Model loading is excluded from every build time
(each model is loaded and warmed up first) and reported on its own.

The 20x copy (~3,800 chunks) is built for real once per pipeline (ours-bf16, plain-bf16, langchain-fp32 by
default; --large-pipelines all adds the fp32/bf16 twins) and, 3 times, as "ours-bf16-nomodel": the same
build_index code with the model call swapped for a lookup of the 1x vectors, which isolates every
non-embedding cost at scale (reading, chunking, hashing, FAISS, BM25, saving).

Run (from /work/main):
    . .venv/bin/activate
    python -m bench.index_build            # full (~14 min when the machine is otherwise idle)
    python -m bench.index_build --quick    # smoke: 3 small files, 2x copy, 1 round (~2-3 min)
    python -m bench.index_build --large-mode cached   # skip real embedding of the 20x copy (~6 min)
    python -m bench.index_build --rounds 1 --no-memory --large-mode real \
        --large-pipelines ours-bf16,plain-bf16,plain-bf16-sliced --out-name index_build_slicing
        # diagnostic: plain encode in build_index's 256-text slices, to explain ours/plain at 20x (~6 min)
    python -m bench.index_build --render bench/results/index_build.json   # re-print the tables of a run
Options: --copies N, --rounds N (1x, default 3), --large-mode both|cached|real, --large-pipelines a,b,...|all
(names: ours-bf16 plain-bf16 ours-fp32 plain-fp32 langchain-fp32 langchain-bf16, and plain-bf16-sliced),
--large-rounds N, --reindex-rounds N, --no-memory, --memory-corpus small|large, --no-wait, --out-name NAME.
Writes bench/results/index_build.json and bench/results/index_build.md (use --out-name to change).
Needs the bench extras: pip install langchain-community langchain-huggingface psutil.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import benchutil as bu  # first: sets HF_HUB_OFFLINE before any HF import

import numpy as np

from bench.index_build_pipelines import (
    ALL_PIPELINES, DEFAULT_LARGE, DTYPES, EXTRA_LARGE, PLAIN_BATCH, Pipelines, corpus_chunks, make_corpora,
    settings_for, shipped_defaults,
)
from bench.index_build_report import render


# ---- recall ------------------------------------------------------------------------------------

def recall_ours(index_dir: Path, dtype: str, questions: list[dict]) -> dict[str, dict]:
    from rag.api import get_embedder
    from rag.evaluation.retrieval import evaluate_retrieval
    from rag.retrieval.retriever import Retriever

    emb = get_embedder(settings_for(index_dir, DTYPES[dtype], bu.ROOT))
    r = Retriever(index_dir, emb, mode="dense", auto_reload=False)
    return {mode: evaluate_retrieval(r, questions, mode)[0].to_dict() for mode in ("dense", "hybrid", "bm25")}


def recall_langchain(store, chunks: list, questions: list[dict]) -> dict:
    from rag.evaluation.retrieval import first_relevant_rank, score_ranks
    from rag.retrieval.retriever import Hit

    by_id = {c.id: c for c in chunks}
    ranks = []
    for q in questions:
        if not q.get("evidence"):
            continue
        docs = store.similarity_search(q["question"], k=10)
        hits = [Hit(by_id[d.metadata["chunk_id"]], 0.0, i) for i, d in enumerate(docs, start=1)]
        ranks.append(first_relevant_rank(hits, q["evidence"]))
    return score_ranks(ranks).to_dict()


# ---- memory: one fresh subprocess per pipeline ------------------------------------------------

def child_main(args: argparse.Namespace) -> None:
    """--child NAME: load, run pipeline NAME once on --child-corpus, print one JSON line."""
    corpus = Path(args.child_corpus)
    chunks_file = Path(args.child_chunks)
    base_rss = bu.rss_mb()
    if args.child == "imports-only":
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401

        print(json.dumps({"peak_rss_mb": bu.peak_rss_mb(), "rss_after_load_mb": bu.rss_mb(), "seconds": 0.0}))
        return
    p = Pipelines()
    kind, dtype = args.child.split("-")[:2]
    p.prepare(args.child)
    after_load = bu.rss_mb()
    peak_after_load = bu.peak_rss_mb()
    if kind == "ours":
        chunks = [None] * int(json.loads(chunks_file.read_text())["n"])
    else:
        from rag.ingest.chunking import Chunk

        chunks = [Chunk.from_record(r) for r in json.loads(chunks_file.read_text())["chunks"]]
    with tempfile.TemporaryDirectory(prefix="rag-bench-child-") as d:
        out = p.run(args.child, corpus, chunks, Path(d) / "index")
    print(json.dumps({"peak_rss_mb": bu.peak_rss_mb(), "rss_at_start_mb": base_rss,
                      "rss_after_load_mb": after_load, "peak_after_load_mb": peak_after_load,
                      "seconds": out["seconds"]}))


def measure_memory(names: list[str], corpus: Path, chunks: list, tmp: Path) -> dict[str, dict]:
    chunks_file = tmp / f"chunks-{corpus.name}.json"
    chunks_file.write_text(json.dumps({"n": len(chunks), "chunks": [c.to_record() for c in chunks]}))
    res = {}
    for name in ["imports-only", *names]:
        cmd = [sys.executable, "-m", "bench.index_build", "--child", name, "--child-corpus", str(corpus),
               "--child-chunks", str(chunks_file)]
        meter = bu.LoadMeter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=bu.ROOT)
        load = meter.stop()
        if proc.returncode != 0:
            res[name] = {"error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["other_cores"] = load["other_cores"]
        res[name] = row
        print(f"  memory {name}: peak {row['peak_rss_mb']:.0f} MiB", file=sys.stderr)
    return res


# ---- re-index ----------------------------------------------------------------------------------

def edit_append(path: Path, n: int) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n\nBenchmark edit {n}: this sentence was appended to change the file a little.\n")


def edit_top(path: Path, n: int) -> None:
    """Insert a sentence into the first non-heading paragraph (shifts the rest of that section)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            lines[i] = f"Benchmark edit {n} inserted this short sentence. " + line
            break
    path.write_text("\n".join(lines), encoding="utf-8")


def reindex_runs(corpus: Path, index_dir: Path, dtype: str, target: Path, rounds: int) -> list[dict]:
    from rag.api import index_corpus

    settings = settings_for(index_dir, DTYPES[dtype], corpus)
    out = []
    for label, action in [("no change", None), ("touch mtime only", "touch"), ("append 1 line", edit_append),
                          ("edit 1st paragraph", edit_top)]:
        samples, embedded, wrote = [], [], []
        for r in range(rounds):
            if action == "touch":
                os.utime(target)
            elif action is not None:
                action(target, r)
            meter = bu.LoadMeter()
            t, rep = bu.timed(lambda: index_corpus(corpus, settings))
            samples.append(t)
            embedded.append(rep.chunks_embedded)
            wrote.append(rep.wrote)
            other = meter.stop()["other_cores"]
        out.append({"case": label, "file": str(target.relative_to(corpus)), **bu.summarize(samples),
                    "chunks_embedded": embedded, "wrote": wrote, "other_cores_last": other})
    return out


# ---- where our build's time goes ----------------------------------------------------------------

def micro_breakdown(chunks: list, vectors: np.ndarray, tmp: Path) -> dict[str, float]:
    """Time the non-embedding parts of build_index on their own: FAISS add, BM25 build, save."""
    from rag.index.store import make_faiss, VectorIndex
    from rag.index.bm25 import BM25Index

    texts = [c.embed_text for c in chunks]
    ids = np.array([c.id for c in chunks], dtype=np.int64)
    t_faiss, fidx = bu.timed(lambda: (lambda f: (f.add_with_ids(vectors, ids), f)[1])(make_faiss("flat", vectors.shape[1], len(chunks))))
    t_bm25, bm25 = bu.timed(lambda: BM25Index.build(texts))
    manifest = {"format_version": 1, "embedding": {"model_id": "x", "dim": vectors.shape[1]},
                "counts": {"chunks": len(chunks)}}
    d = tmp / "micro-save"
    t_save, _ = bu.timed(lambda: VectorIndex(chunks, vectors, fidx, bm25, manifest).save(d))
    shutil.rmtree(d, ignore_errors=True)
    return {"faiss_add": t_faiss, "bm25_build": t_bm25, "save_with_fsync": t_save}


def batch_sweep(p: Pipelines, chunks: list, n: int) -> list[dict]:
    texts = [c.embed_text for c in chunks[:n]]
    rows = []
    for dtype in ("bf16", "fp32"):
        m = p.plain_model(dtype)
        for bs in (8, 16, 32, 64):
            t, _ = bu.timed(lambda: m.encode(texts, batch_size=bs, normalize_embeddings=True, show_progress_bar=False))
            rows.append({"dtype": dtype, "batch_size": bs, "n": len(texts), "seconds": t, "chunks_per_s": len(texts) / t})
    return rows


# ---- main ----------------------------------------------------------------------------------------

def bench_corpus(label: str, corpus: Path, pipelines: list[str], rounds: int, p: Pipelines, tmp: Path,
                 chunks: list, quiet: dict[str, float] | None) -> dict[str, Any]:
    """Interleaved rounds of every pipeline on one corpus; keeps the last index/vectors/store of each."""
    res: dict[str, Any] = {"label": label, "corpus": str(corpus), "chunks": len(chunks),
                           "files": sum(1 for _ in corpus.rglob("*.md")), "runs": {}}
    kept: dict[str, Any] = {}
    for name in pipelines:
        t, _ = bu.timed(lambda: p.prepare(name))
    for r in range(rounds):
        order = pipelines[r % len(pipelines):] + pipelines[:r % len(pipelines)]
        for name in order:
            index_dir = tmp / f"idx-{label}-{name}-r{r}"
            wait = bu.wait_for_quiet(**quiet) if quiet else {}
            meter = bu.LoadMeter()
            cpu0 = time.process_time()
            out = p.run(name, corpus, chunks, index_dir)
            cpu = time.process_time() - cpu0
            load = meter.stop()
            run = res["runs"].setdefault(name, {"samples": [], "cpu_seconds": [], "other_cores": [], "stages": [], "waits": []})
            run["samples"].append(out["seconds"])
            run["cpu_seconds"].append(cpu)
            run["other_cores"].append(load["other_cores"])
            run["waits"].append(wait)
            if "stages" in out:
                run["stages"].append(out["stages"])
            prev = kept.get(name, {}).get("index_dir")
            if prev and prev != index_dir:
                shutil.rmtree(prev, ignore_errors=True)
            kept[name] = {"index_dir": index_dir, **{k: v for k, v in out.items() if k in ("vectors", "store")}}
            print(f"  [{label}] round {r + 1}/{rounds} {name}: {out['seconds']:.2f}s "
                  f"(other processes ~{load['other_cores']:.2f} cores; waited {wait.get('waited_s', 0)}s for quiet)",
                  file=sys.stderr)
    for name, run in res["runs"].items():
        run.update({k: v for k, v in bu.summarize(run["samples"]).items() if k != "samples"})
        if run["stages"]:
            best = min(range(len(run["samples"])), key=lambda i: run["samples"][i])
            run["stages_of_best"] = run["stages"][best]
    return res, kept


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = np.sum(a * b, axis=1)
    return {"min": float(c.min()), "mean": float(c.mean()), "p01": float(np.percentile(c, 1))}


def ours_vectors(index_dir: Path, chunks: list) -> np.ndarray:
    """The vectors of our saved index, in the order of `chunks` (checked by chunk id)."""
    from rag.index.store import current_generation

    gen = current_generation(index_dir)
    ids = [json.loads(line)["id"] for line in (gen / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    pos = {i: n for n, i in enumerate(ids)}
    vecs = np.load(gen / "vectors.npy")
    return vecs[[pos[c.id] for c in chunks]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke mode: 3 small files, 2x copy, 1 round")
    ap.add_argument("--copies", type=int, default=None, help="size of the large corpus in copies (default 20; quick 2)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds on corpus/ (default 2; quick 1)")
    ap.add_argument("--large-mode", choices=["both", "cached", "real"], default="both",
                    help="real: embed the large copy for real with --large-pipelines (1 round each); cached: time "
                         "only ours with the model replaced by a lookup of the 1x vectors (every non-embedding cost "
                         "at scale; 3 rounds; embedding extrapolated from 1x); both (default)")
    ap.add_argument("--large-rounds", type=int, default=1, help="rounds of the real pipelines on the large copy (default 1)")
    ap.add_argument("--large-pipelines", default=",".join(DEFAULT_LARGE),
                    help=f"pipelines embedded for real on the large copy, or 'all' (default {','.join(DEFAULT_LARGE)})")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait (up to 90 s) for other processes to go quiet before each timed run")
    ap.add_argument("--reindex-rounds", type=int, default=None, help="repeats of each re-index case (default 3; quick 1)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-corpus", choices=["small", "large"], default="small")
    ap.add_argument("--out-name", default="index_build")
    ap.add_argument("--render", metavar="JSON", help="only re-print the tables of an earlier results JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-corpus", help=argparse.SUPPRESS)
    ap.add_argument("--child-chunks", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return

    copies = args.copies or (2 if args.quick else 20)
    rounds = args.rounds or (1 if args.quick else 3)
    large_rounds = args.large_rounds
    quiet = None if args.no_wait else {"threshold": 0.25, "max_wait": 20.0 if args.quick else 90.0}
    re_rounds = args.reindex_rounds or (1 if args.quick else 3)
    large_pipes = ALL_PIPELINES if args.large_pipelines == "all" else [s for s in args.large_pipelines.split(",") if s]
    for n in large_pipes:
        if n not in ALL_PIPELINES + EXTRA_LARGE:
            ap.error(f"unknown pipeline {n}; choose from {ALL_PIPELINES + EXTRA_LARGE}")
    if args.large_mode == "cached":
        large_pipes = []
    if args.large_mode in ("both", "cached"):
        large_pipes = large_pipes + ["ours-bf16-nomodel"]
    whole = bu.LoadMeter()
    t_start = time.time()
    info = bu.machine_info()
    print(f"machine: {info.get('cpu')} x{info['cpus']}, load {info['loadavg_at_start']}; "
          f"busy others: {info['busy_other_processes_at_start']}", file=sys.stderr)

    t_imports, _ = bu.timed(lambda: (__import__("torch"), __import__("sentence_transformers"), __import__("faiss"),
                                     __import__("bm25s"), __import__("rag.api")))
    from rag.api import make_chunker
    from rag.evaluation.retrieval import load_questions

    results: dict[str, Any] = {"script": "bench/index_build.py", "args": vars(args), "quick": args.quick,
                               "copies": copies, "rounds_small": rounds, "rounds_large": large_rounds, "large_mode": args.large_mode,
                               "machine": info, "plain_batch_size": PLAIN_BATCH, "import_seconds": t_imports,
                               "wait_for_quiet": quiet}
    questions = load_questions(bu.ROOT / "eval" / "dev_questions.jsonl")
    p = Pipelines()
    with tempfile.TemporaryDirectory(prefix="rag-bench-index-") as td:
        tmp = Path(td)
        small, large = make_corpora(tmp, args.quick, copies)
        emb = p.ours_embedder("bf16")
        make = lambda: make_chunker(emb, settings_for(tmp, "bfloat16", small))  # noqa: E731
        t_chunk_small, chunks_small = bu.timed(lambda: corpus_chunks(small, make))
        t_chunk_large, chunks_large = bu.timed(lambda: corpus_chunks(large, make))
        t_chunk_large_fresh, _ = bu.timed(lambda: corpus_chunks(large, make, fresh_per_file=True))
        results["chunking_seconds"] = {"small": t_chunk_small, "large": t_chunk_large,
                                       "large_fresh_chunker_per_file": t_chunk_large_fresh}
        results["settings"] = shipped_defaults()
        print(f"chunks: corpus/ {len(chunks_small)}, {copies}x {len(chunks_large)}", file=sys.stderr)

        # a) b) c) e): timings
        small_res, small_kept = bench_corpus("1x", small, ALL_PIPELINES, rounds, p, tmp, chunks_small, quiet)
        vec_s = ours_vectors(small_kept["ours-bf16"]["index_dir"], chunks_small)
        p.cache = {c.embed_text: v for c, v in zip(chunks_small, vec_s)}
        missing = sum(1 for c in chunks_large if c.embed_text not in p.cache)
        assert missing == 0, f"{missing} large-copy chunks not in the 1x chunks"
        real_large = [n for n in large_pipes if not n.endswith("-nomodel")]
        large_res, large_kept = bench_corpus(f"{copies}x", large, real_large, large_rounds, p, tmp, chunks_large, quiet) \
            if real_large else ({"label": f"{copies}x", "corpus": str(large), "chunks": len(chunks_large), "runs": {},
                                 "files": sum(1 for _ in large.rglob("*.md"))}, {})
        if "ours-bf16-nomodel" in large_pipes:
            nm_res, nm_kept = bench_corpus(f"{copies}x", large, ["ours-bf16-nomodel"], 3, p, tmp, chunks_large, quiet)
            large_res["runs"].update(nm_res["runs"])
            large_kept.update(nm_kept)
            # embedding at scale, extrapolated: the 1x ours-bf16 embed stage per chunk x the large chunk count
            st1 = small_res["runs"]["ours-bf16"]["stages_of_best"]
            per_chunk = st1["embed"] / len(chunks_small)
            large_res["estimated_real_build_s"] = nm_res["runs"]["ours-bf16-nomodel"]["best"] + per_chunk * len(chunks_large)
            large_res["embed_per_chunk_1x_s"] = per_chunk
        results["load_seconds"] = dict(p.load_seconds)
        results["small"], results["large"] = small_res, large_res

        # where the time goes, outside embedding
        big = "ours-bf16" if "ours-bf16" in large_kept else "ours-bf16-nomodel"
        vec_l = ours_vectors(large_kept[big]["index_dir"], chunks_large) if big in large_kept else None
        results["micro_small"] = micro_breakdown(chunks_small, ours_vectors(small_kept["ours-bf16"]["index_dir"], chunks_small), tmp)
        if vec_l is not None:
            results["micro_large"] = micro_breakdown(chunks_large, vec_l, tmp)
        results["batch_sweep"] = batch_sweep(p, chunks_small, 32 if args.quick else 128)

        # e) bf16 vs fp32 vectors
        v16, v32 = small_kept["plain-bf16"]["vectors"], small_kept["plain-fp32"]["vectors"]
        results["cosine"] = {
            "plain_bf16_vs_plain_fp32": cosines(v16, v32),
            "ours_bf16_vs_plain_fp32": cosines(ours_vectors(small_kept["ours-bf16"]["index_dir"], chunks_small), v32),
            "ours_fp32_vs_plain_fp32": cosines(ours_vectors(small_kept["ours-fp32"]["index_dir"], chunks_small), v32),
            "ours_bf16_vs_plain_bf16": cosines(ours_vectors(small_kept["ours-bf16"]["index_dir"], chunks_small), v16),
        }

        # d) recall
        rec: dict[str, Any] = {}
        for label, kept, chunks in [("1x", small_kept, chunks_small), (f"{copies}x", large_kept, chunks_large)]:
            rec[label] = {}
            for dt in ("bf16", "fp32"):
                for name in (f"ours-{dt}", f"ours-{dt}-nomodel"):
                    if name in kept and (name == f"ours-{dt}" or f"ours-{dt}" not in kept):
                        for mode, s in recall_ours(kept[name]["index_dir"], dt, questions).items():
                            rec[label][f"{name} {mode}"] = s
                if f"langchain-{dt}" in kept:
                    rec[label][f"langchain-{dt} (L2 flat)"] = recall_langchain(kept[f"langchain-{dt}"]["store"], chunks, questions)
        results["recall"] = rec

        # f) memory, in fresh subprocesses
        if not args.no_memory:
            mem_corpus, mem_chunks = (small, chunks_small) if args.memory_corpus == "small" else (large, chunks_large)
            results["memory"] = {"corpus": args.memory_corpus, "chunks": len(mem_chunks),
                                 "pipelines": measure_memory(["ours-bf16", "plain-bf16", "ours-fp32", "plain-fp32",
                                                              "langchain-fp32", "langchain-bf16"],
                                                             mem_corpus, mem_chunks, tmp)}

        # g) re-index
        reidx = {}
        biggest = max((p_ for p_ in small.iterdir()), key=lambda q: q.stat().st_size).name
        for label, corpus, kept, res in [("1x", small, small_kept, small_res),
                                         (f"{copies}x", large, large_kept, large_res)]:
            name = "ours-bf16" if "ours-bf16" in kept else "ours-bf16-nomodel"
            if name not in kept:
                continue
            target = corpus / biggest if label == "1x" else corpus / "copy00" / biggest
            if quiet:
                bu.wait_for_quiet(**quiet)
            runs = reindex_runs(corpus, kept[name]["index_dir"], "bf16", target, re_rounds)
            real = "ours-bf16" in res["runs"]
            full = res["runs"]["ours-bf16"]["best"] if real else res["estimated_real_build_s"]
            for r in runs:
                r["fraction_of_full_build"] = r["median"] / full
            reidx[label] = {"full_build_best_s": full, "full_build_is_estimate": not real, "runs": runs}
            print(f"  re-index {label} done", file=sys.stderr)
        results["reindex"] = reidx

    bu.finish_run(results, whole, t_start, render, args.out_name)


if __name__ == "__main__":
    main()
