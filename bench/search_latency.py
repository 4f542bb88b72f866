"""Search latency benchmark: p50/p95 of rag.retrieve.Retriever.search at 1k, 10k and 100k chunks.

What it measures, per index size and FAISS type (flat; hnsw as rag.index.make_faiss builds it), for the
dense, bm25 and hybrid modes, with top_k=5, over ~50 real queries from eval/dev_questions.jsonl (the 29
questions plus their "answer" texts, 58 queries) x several passes after a warm-up pass:

  * end-to-end: Retriever.search(query) = query embedding (bundled MiniLM, dtype auto = bf16 here) +
    FAISS and/or BM25 search + rank fusion + Hit objects (the product's own code path, auto-reload check
    included);
  * search only: the same Retriever.search with the query vector precomputed (the embedder is swapped for
    a lookup), i.e. everything but the model (bm25 mode embeds the query too: Retriever.search fills in
    each hit's dense cosine in every mode, so bm25 end-to-end includes a query embedding);
  * FAISS only: the raw faiss index.search call for one query vector (dense);
  * query embedding alone (bf16 and fp32), which does not depend on the index size.
Ratios are against the 1k index of the same kind (same FAISS type and vector source), measured in the
same process.

How the indexes are made: the real chunks of corpus/ (as our chunker cuts them) plus synthetic chunks
made by recombining random sentences of the real ones into passages of real-chunk length, under real
section labels. With the default child windows the real chunks are children of larger
passages; synthetic chunks are then grouped into passages of the real average number of children, so
the search groups children into passages and collapses near-duplicates as it does on a real index. BM25 is always real (bm25s over the synthetic texts). Dense vectors: the 1k index is
embedded with the real model; the 10k and 100k indexes use RANDOM UNIT VECTORS (embedding 100k passages
takes hours on this CPU). Flat search time does not depend on the vectors' values (the "1k random" rows
check that); HNSW's does, and random 384-d vectors are a hard, unrealistic case for it, so HNSW's
latency and its agreement with exact search at 10k/100k are indicative only. The queries are always
real embeddings.

Run (from /work/main):
    . .venv/bin/activate
    python -m bench.search_latency           # full: 1k (real vectors + random), 10k, 100k; 3 passes (~10-15 min here)
    python -m bench.search_latency --quick   # smoke: 1k and 5k, random vectors, 10 queries, 1 pass (~1-2 min)
Options: --no-wait (don't wait up to 30 s for other processes to go quiet before each measurement),
         --sizes 1000,10000,100000  --passes N  --real-max N (sizes up to N get real embeddings; default 1000),
         --hnsw-min N (also build HNSW for sizes >= N), --out-name NAME.
Writes bench/results/search_latency.json and bench/results/search_latency.md.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import benchutil as bu  # first: sets HF_HUB_OFFLINE before any HF import

import numpy as np

MODES = ("dense", "bm25", "hybrid")
TOP_K = 5
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def real_chunks(embedder, settings) -> list:
    from rag.api import make_chunker
    from rag.ingest.loaders import load_documents

    chunker = make_chunker(embedder, settings)
    docs, _ = load_documents(bu.ROOT / "corpus")
    out, seen = [], set()
    for d in docs:
        for c in chunker.split(d):
            if c.id not in seen:
                seen.add(c.id)
                out.append(c)
    return out


def synthetic_chunks(base: list, n: int, seed: int = 0) -> list:
    """`base` (the real chunks) followed by recombined ones, n in all."""
    from rag.ingest.chunking import Chunk, chunk_id

    rng = random.Random(seed)
    sentences = [s.strip() for c in base for s in _SENT.split(c.text) if len(s.strip()) >= 20]
    lengths = [len(c.text) for c in base]
    sections = [c.section for c in base]
    out = list(base[:n])
    i = len(out)
    while len(out) < n:
        target = rng.choice(lengths)
        parts, size = [], 0
        while size < target:
            s = rng.choice(sentences)
            parts.append(s)
            size += len(s) + 1
        text = " ".join(parts)
        source = f"synthetic/doc{i // 40:05d}.md"
        section = rng.choice(sections)
        out.append(Chunk(chunk_id(source, section, text, i), text, source, section, (0, len(text))))
        i += 1
    return group_like(base, out)


def group_like(base: list, chunks: list) -> list:
    """Give the synthetic chunks parents as the real ones have them (child windows of passages,
    rag/retrieval/parent_child.py): runs of as many chunks as a real passage has children on average."""
    from rag.ingest.chunking import chunk_id

    parents = {c.metadata["parent"] for c in base if "parent" in c.metadata}
    if not parents:
        return chunks
    fanout = max(1, round(len(base) / len(parents)))
    for start in range(len(base), len(chunks), fanout):
        run = chunks[start:start + fanout]
        text = " ".join(c.text for c in run)
        pid = chunk_id(run[0].source, run[0].section, text, start)
        for j, c in enumerate(run):
            c.metadata.update({"parent": pid, "parent_span": [0, len(text)], "embed_context": ""})
            if j == 0:
                c.metadata["parent_text"] = text
    return chunks


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def build_and_save(chunks: list, vectors: np.ndarray, faiss_type: str, embedder, index_dir: Path,
                   bm25=None) -> dict[str, Any]:
    """Write an index generation the way build_index does (same classes), timing each part."""
    from rag.index.store import FORMAT_VERSION, VectorIndex, make_faiss
    from rag.index.bm25 import BM25Index

    times: dict[str, float] = {}
    ids = np.array([c.id for c in chunks], dtype=np.int64)
    t0 = time.perf_counter()
    fidx = make_faiss(faiss_type, vectors.shape[1], len(chunks))
    fidx.add_with_ids(vectors, ids)
    times["faiss_build_s"] = time.perf_counter() - t0
    if bm25 is None:
        times["bm25_build_s"], bm25 = bu.timed(lambda: BM25Index.build([c.embed_text for c in chunks]))
    manifest = {
        "format_version": FORMAT_VERSION,
        "embedding": {"model_id": embedder.model_id, "dim": int(vectors.shape[1]), "normalized": True,
                      "dtype": embedder.dtype, "max_tokens": embedder.max_tokens, "vector_dtype": "float32"},
        "chunker": {}, "faiss": {"type": faiss_type, "metric": "inner_product", "ids": "chunk_id (IndexIDMap2)"},
        "bm25": {"library": "bm25s"}, "corpus_root": "synthetic", "files": {},
        "counts": {"files": 0, "chunks": len(chunks)}, "created": "bench", "updated": "bench",
    }
    times["save_s"], _ = bu.timed(lambda: VectorIndex(chunks, vectors, fidx, bm25, manifest).save(index_dir))
    from rag.index.store import current_generation

    gen = current_generation(index_dir)
    times["disk_mb"] = sum(p.stat().st_size for p in gen.rglob("*") if p.is_file()) / 1048576
    return {"times": times, "bm25": bm25}


class FixedQueryEmbedder:
    """Stands in for the Embedder with precomputed query vectors: Retriever.search minus the model."""

    def __init__(self, real, qvecs: dict[str, np.ndarray]):
        self.model_id, self.dim, self.dtype = real.model_id, real.dim, real.dtype
        self._q = qvecs

    def encode_query(self, text: str) -> np.ndarray:
        return self._q[text]


def time_calls(fn, items: list, passes: int) -> list[float]:
    for it in items:  # warm-up pass, not counted
        fn(it)
    out = []
    for _ in range(passes):
        for it in items:
            t0 = time.perf_counter()
            fn(it)
            out.append(time.perf_counter() - t0)
    return out


def lat(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"p50_ms": bu.percentile(ms, 50), "p95_ms": bu.percentile(ms, 95), "mean_ms": sum(ms) / len(ms), "n": len(ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke mode: 1k and 5k, random vectors, 10 queries, 1 pass")
    ap.add_argument("--sizes", default=None, help="comma-separated chunk counts (default 1000,10000,100000)")
    ap.add_argument("--passes", type=int, default=None, help="timed passes over the queries (default 3; quick 1)")
    ap.add_argument("--real-max", type=int, default=None,
                    help="indexes up to this size get real model embeddings (default 1000; quick 0)")
    ap.add_argument("--hnsw-min", type=int, default=1000, help="also build HNSW for sizes >= this (default 1000)")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait (up to 30 s) for other processes to go quiet before each measurement")
    ap.add_argument("--out-name", default="search_latency")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("1000,5000" if args.quick else "1000,10000,100000")).split(",")]
    passes = args.passes or (1 if args.quick else 3)
    real_max = args.real_max if args.real_max is not None else (0 if args.quick else 1000)
    quiet = None if args.no_wait else {"threshold": 0.25, "max_wait": 10.0 if args.quick else 30.0}

    whole = bu.LoadMeter()
    t_start = time.time()
    info = bu.machine_info()
    print(f"machine: {info.get('cpu')} x{info['cpus']}, load {info['loadavg_at_start']}; "
          f"busy others: {info['busy_other_processes_at_start']}", file=sys.stderr)

    from rag.api import get_embedder
    from rag.config import Settings
    from rag.retrieval.retriever import Retriever

    knobs = ("embed_model", "embed_batch_size", "chunk_tokens", "chunk_overlap", "rrf_k")
    # shipped defaults, explicitly (so a rag.toml or RAG_* env cannot skew results)
    settings = Settings(index_dir=Path("/nonexistent"), embed_dtype="auto", mode="dense", top_k=TOP_K,
                        **{k: Settings.model_fields[k].default for k in knobs})
    emb = get_embedder(settings)
    emb.encode(["warm up"])
    queries = [q["question"] for q in bu.load_queries(bu.ROOT / "eval" / "dev_questions.jsonl", with_answers=True)]
    if args.quick:
        queries = queries[:10]
    base = real_chunks(emb, settings)
    print(f"{len(queries)} queries, {len(base)} real chunks", file=sys.stderr)

    results: dict[str, Any] = {"script": "bench/search_latency.py", "args": vars(args), "quick": args.quick,
                               "sizes": sizes, "passes": passes, "real_max": real_max, "n_queries": len(queries),
                               "n_real_chunks": len(base), "top_k": TOP_K, "machine": info, "wait_for_quiet": quiet,
                               "configs": []}

    # query embedding alone, bf16 (default) and fp32
    qe = {}
    from rag.index.embeddings import Embedder

    for label, e in (("bf16 (auto)", emb), ("fp32", Embedder("bundled", dtype="float32"))):
        e.encode(["warm up"])
        if quiet:
            bu.wait_for_quiet(**quiet)
        m = bu.LoadMeter()
        qe[label] = {**lat(time_calls(e.encode_query, queries, passes)), "other_cores": m.stop()["other_cores"]}
    results["query_embedding"] = qe
    qvecs = {q: emb.encode_query(q) for q in queries}
    fixed = FixedQueryEmbedder(emb, qvecs)
    qmat = np.stack([qvecs[q] for q in queries]).astype(np.float32)

    configs: list[tuple[int, str, str]] = []  # (size, vector source, faiss type)
    for n in sizes:
        srcs = (["real", "random"] if n <= real_max else ["random"])
        for src in srcs:
            for ft in (["flat", "hnsw"] if n >= args.hnsw_min else ["flat"]):
                configs.append((n, src, ft))

    with tempfile.TemporaryDirectory(prefix="rag-bench-search-") as td:
        tmp = Path(td)
        built_chunks: dict[int, list] = {}
        vec_cache: dict[tuple[int, str], np.ndarray] = {}
        bm25_cache: dict[int, Any] = {}
        exact_top: dict[tuple[int, str], np.ndarray] = {}
        for n, src, ft in configs:
            print(f"  building {n} chunks, {src} vectors, {ft} ...", file=sys.stderr)
            if n not in built_chunks:
                built_chunks[n] = synthetic_chunks(base, n)
            chunks = built_chunks[n]
            key = (n, src)
            embed_s = None
            if key not in vec_cache:
                if src == "real":
                    embed_s, vec_cache[key] = bu.timed(lambda: emb.encode([c.embed_text for c in chunks]))
                else:
                    vec_cache[key] = random_unit(n, emb.dim, seed=n)
            vectors = vec_cache[key]
            index_dir = tmp / f"idx-{n}-{src}-{ft}"
            built = build_and_save(chunks, vectors, ft, emb, index_dir, bm25=bm25_cache.get(n))
            if n not in bm25_cache:
                bm25_cache[n] = built["bm25"]
            bt = built["times"]
            if embed_s is not None:
                bt["embed_s"] = embed_s
            load_s, r_e2e = bu.timed(lambda: Retriever(index_dir, emb, mode="dense", top_k=TOP_K))
            bt["load_s"] = load_s
            r_fixed = Retriever(index_dir, fixed, mode="dense", top_k=TOP_K)
            row: dict[str, Any] = {"size": n, "vectors": src, "faiss": ft, "build": bt, "rss_mb": bu.rss_mb(), "lat": {}}
            fidx = r_fixed.index.faiss
            loads = []

            def measure(metric: str, fn, items: list) -> None:
                wait = bu.wait_for_quiet(**quiet) if quiet else {"quiet": True}
                meter = bu.LoadMeter()
                samples = time_calls(fn, items, passes)
                load = meter.stop()
                if load["wall_s"] < 0.5:  # too short for /proc/stat's 10 ms ticks: use the load measured just before
                    load = {"other_cores": wait.get("other_cores_before", bu.other_load(0.5))}
                row["lat"][metric] = {**lat(samples), "other_cores": load["other_cores"], "started_quiet": wait["quiet"]}
                loads.append(row["lat"][metric]["other_cores"])

            measure("faiss only", lambda i: fidx.search(qmat[i:i + 1], TOP_K), list(range(len(queries))))
            for mode in MODES:
                measure(f"{mode} search only", lambda q: r_fixed.search(q, TOP_K, mode), queries)
                # bm25 too: Retriever.search embeds the query in every mode to give each hit its dense cosine
                measure(f"{mode} end-to-end", lambda q: r_e2e.search(q, TOP_K, mode), queries)
            row["other_cores"] = max(loads)
            # agreement of this index's dense top-k with exact search over the same vectors
            _, ids = fidx.search(qmat, TOP_K)
            if ft == "flat":
                exact_top[key] = ids
            elif key in exact_top:
                ex = exact_top[key]
                row["topk_agreement_with_flat"] = float(np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(ids, ex)]))
            results["configs"].append(row)
            print(f"    dense e2e p50 {row['lat']['dense end-to-end']['p50_ms']:.2f} ms, "
                  f"search only p50 {row['lat']['dense search only']['p50_ms']:.2f} ms, "
                  f"bm25 p50 {row['lat']['bm25 search only']['p50_ms']:.2f} ms (other ~{row['other_cores']} cores)",
                  file=sys.stderr)
            del r_e2e, r_fixed, fidx
            shutil.rmtree(index_dir, ignore_errors=True)
    bu.finish_run(results, whole, t_start, render, args.out_name)


def render(R: dict[str, Any]) -> str:
    m = R["machine"]
    out = [f"## Search latency benchmark{' (QUICK smoke mode)' if R['quick'] else ''}\n",
           f"Machine: {m.get('cpu')} x{m['cpus']} cores, torch {m.get('torch')}. Load avg at start {m['loadavg_at_start']}, "
           f"at end {R['loadavg_at_end']}; other processes kept ~{R['load_whole_run']['other_cores']} of {m['cpus']} cores "
           f"busy on average over the run ({R['total_seconds'] / 60:.1f} min).",
           f"Busy other processes at start: {m['busy_other_processes_at_start']}; at end: {R['busy_other_processes_at_end']}.",
           f"{R['n_queries']} queries (eval questions + their answer texts), top_k={R['top_k']}, {R['passes']} timed "
           f"passes after a warm-up pass; indexes = the {R['n_real_chunks']} real chunks of corpus/ + recombined-sentence "
           f"synthetic chunks; BM25 always real. Vectors: 'real' = embedded with the bundled model (bf16); "
           f"'random' = RANDOM UNIT VECTORS (not embedded: too slow here), so HNSW numbers on them are indicative only.\n"]
    out.append("### Query embedding alone (independent of index size)\n")
    out.append(bu.md_table(["dtype", "p50 ms", "p95 ms", "mean ms", "other cores"],
                           [[k, v["p50_ms"], v["p95_ms"], v["mean_ms"], v["other_cores"]] for k, v in R["query_embedding"].items()]))
    out.append("")
    if R.get("wait_for_quiet"):
        out.append(f"Before each measurement the script waited up to {R['wait_for_quiet']['max_wait']:.0f}s for other processes to use "
                   f"< {R['wait_for_quiet']['threshold']} cores; '(busy)' marks measurements started after that wait timed out.\n")
    base: dict[tuple[str, str], dict] = {}
    smallest = min(R["sizes"])
    for row in R["configs"]:
        if row["size"] == smallest:
            base[(row["vectors"], row["faiss"])] = row
    metrics = list(R["configs"][0]["lat"].keys())
    out.append(f"### Latency by index size (ratio = p50 / p50 of the {smallest} index with the same vectors and FAISS type)\n")
    rows = []
    for row in R["configs"]:
        b = base.get((row["vectors"], row["faiss"])) or base.get(("random", row["faiss"]))
        for metric in metrics:
            v = row["lat"][metric]
            r = v["p50_ms"] / b["lat"][metric]["p50_ms"] if b else None
            rows.append([row["size"], row["vectors"], row["faiss"], metric, v["p50_ms"], v["p95_ms"], r,
                         f"{v['other_cores']:.2f}" + ("" if v["started_quiet"] else " (busy)")])
    out.append(bu.md_table(["chunks", "vectors", "faiss", "what", "p50 ms", "p95 ms", "x p50 at base", "other cores"], rows))
    out.append("\n### Index build/load per configuration\n")
    rows = []
    for row in R["configs"]:
        bt = row["build"]
        rows.append([row["size"], row["vectors"], row["faiss"], bt.get("embed_s"), bt["faiss_build_s"], bt.get("bm25_build_s"),
                     bt["save_s"], bt["load_s"], bt["disk_mb"], row["rss_mb"], row.get("topk_agreement_with_flat"), row["other_cores"]])
    out.append(bu.md_table(["chunks", "vectors", "faiss", "embed s", "faiss build s", "bm25 build s", "save s",
                            "load (Retriever init) s", "disk MiB", "process RSS MiB", "HNSW top-5 = flat top-5",
                            "other cores during timing"], rows))
    return "\n".join(out)


if __name__ == "__main__":
    main()
