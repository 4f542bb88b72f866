"""Ray scale-out benchmark: `rag index` in one process vs on Ray Data with 1 and 2 workers, on the 20x corpus.

What it measures (from scratch each time, the same 20x corpus, the shipped settings):
  a) single-process: rag.api.index_corpus with the default LocalEngine (torch with all cores; the
     embedding model loaded and warmed up before the clock starts, as in bench/index_build.py), and the
     same with one torch thread (the compute of one Ray worker, so ray-1 vs it shows Ray's own costs);
  b) ray-1, ray-2: the same call with rag.index.ray_engine.RayEngine(workers=1|2, 1 CPU per worker) on
     a local Ray cluster (127.0.0.1, started once and timed on its own). The clock includes what a Ray
     run really pays: starting each stage's actors and loading the model in each of them;
  c) for each: wall time, chunks/s end to end, the time of each stage (read+chunk, embed) and what is
     left for the driver (walk, digests, de-duplication, FAISS, BM25, atomic save); for the Ray runs, from
     RayEngine.stats, how many workers did work, the rate per worker while it computed (items / its busy
     seconds, summed over workers) and each stage's overhead (stage wall - busy seconds / workers: actor
     start, model load, scheduling, transfers, idle tail);
  d) "other cores": how many cores processes outside this benchmark's process tree (the driver, and
     Ray's gcs/raylet/workers, which are its descendants) kept busy during the run; this machine is
     shared, and a busy neighbour slows everything.
From the measured per-worker rates it writes an estimate for 1 million chunks on a cluster (see
`estimate()`): N nodes x workers per node x the per-worker rate, plus the stage overheads, plus the driver's
share extrapolated linearly from this run.

The 20x corpus: every file of corpus/ copied into copy00/ .. copy19/, each copy with a first line
`<!-- copy NN -->` so its bytes differ: `rag index` indexes identical files once, and a plain
copy would be skipped as "same content".

Run (from /work/main, with the ray extra: pip install -e '.[ray]'):
    . .venv/bin/activate
    python -m bench.ray_scaling                 # 20x corpus, 1 round (15 min on this shared 2-core machine)
    python -m bench.ray_scaling --copies 2      # smoke (~2 min)
    python -m bench.ray_scaling --address HOST:6379 --workers 1,8,16 --gpus-per-worker 1
        # on a real cluster: measure the per-GPU-worker rate that the estimate needs
    python -m bench.ray_scaling --render bench/results/ray_scaling.json
Options: --copies N, --rounds N, --workers a,b,... (Ray worker counts, default 1,2), --no-wait,
--out-name NAME. Writes bench/results/ray_scaling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench import benchutil as bu  # noqa: E402  (after RAY_USAGE_STATS_ENABLED is set)

TARGET_CHUNKS = 1_000_000


# ---- corpus -----------------------------------------------------------------------------------

def make_corpus(root: Path, copies: int) -> Path:
    """corpus/ copied `copies` times into root/copyNN/, each file's bytes made distinct by a first line."""
    files = [p for p in sorted((bu.ROOT / "corpus").iterdir()) if p.is_file() and not p.name.startswith(".")]
    for i in range(copies):
        d = root / f"copy{i:02d}"
        d.mkdir(parents=True)
        for p in files:
            (d / p.name).write_bytes(f"<!-- copy {i:02d} -->\n".encode() + p.read_bytes())
    return root


# ---- measuring --------------------------------------------------------------------------------

class TreeMeter:
    """CPU-seconds of this process and all its descendants (Ray's gcs, raylet and workers when this
    process started the cluster) vs the whole machine: own and other cores over the run."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.t = time.perf_counter()
        self.busy = self._busy()
        self.own = self._tree()

    def _busy(self) -> float:
        """CPU-seconds all cores spent busy since boot."""
        c = self.psutil.cpu_times()
        return sum(c) - c.idle - getattr(c, "iowait", 0.0) - getattr(c, "guest", 0.0) - getattr(c, "guest_nice", 0.0)

    def _tree(self) -> float:
        me = self.psutil.Process()
        total = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                pass
        return total

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t, 1e-9)
        own = self._tree() - self.own
        busy = self._busy() - self.busy
        return {"own_cores": round(own / wall, 2), "other_cores": round(max(busy - own, 0.0) / wall, 2)}


class TimedEngine:
    """Wraps a BuildEngine and times its two stages."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.read_s = self.embed_s = 0.0
        self.files = self.texts = 0

    def read_files(self, jobs, chunker, embedder, on_progress=None):
        t = time.perf_counter()
        out = self.inner.read_files(jobs, chunker, embedder, on_progress)
        self.read_s += time.perf_counter() - t
        self.files += len(jobs)
        return out

    def embed(self, texts, embedder, on_progress=None):
        t = time.perf_counter()
        out = self.inner.embed(texts, embedder, on_progress)
        self.embed_s += time.perf_counter() - t
        self.texts += len(texts)
        return out


def build_once(corpus: Path, index_dir: Path, engine: Any, quiet: dict | None) -> dict[str, Any]:
    """One from-scratch build of `corpus` into `index_dir` with `engine`, timed."""
    from rag.api import index_corpus
    from rag.config import Settings

    shutil.rmtree(index_dir, ignore_errors=True)
    waited = bu.wait_for_quiet(**quiet) if quiet else None
    timed = TimedEngine(engine)
    meter = TreeMeter()
    t0 = time.perf_counter()
    report = index_corpus(corpus, Settings(index_dir=index_dir, corpus_dir=corpus), rebuild=True, engine=timed)
    wall = time.perf_counter() - t0
    load = meter.stop()
    return {"wall_s": round(wall, 2), "files": timed.files, "chunks": report.chunks_total,
            "embedded": report.chunks_embedded, "read_chunk_s": round(timed.read_s, 2),
            "embed_s": round(timed.embed_s, 2), "driver_s": round(wall - timed.read_s - timed.embed_s, 2),
            "chunks_per_s": round(report.chunks_embedded / wall, 1), **load, "waited": waited,
            "stages": json.loads(json.dumps(getattr(engine, "stats", {})))}


def stage_facts(stage: dict[str, Any]) -> dict[str, float]:
    """A Ray stage's per-worker rate while busy (items/s) and its overhead (wall - busy / workers), s."""
    workers = max(stage.get("workers", 1), 1)
    busy = stage.get("busy_s", 0.0)
    return {"rate": stage["items"] / busy if busy else float("nan"),
            "overhead_s": stage["seconds"] - busy / workers, "workers": workers}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rag.api import get_embedder
    from rag.config import Settings
    from rag.index.build import LocalEngine

    workers_list = [int(w) for w in args.workers.split(",")]
    quiet = None if args.no_wait else {"threshold": 0.25, "max_wait": 60.0}
    results: dict[str, Any] = {"machine": bu.machine_info(), "copies": args.copies, "rounds": args.rounds,
                               "address": args.address, "gpus_per_worker": args.gpus_per_worker, "runs": {}}
    s = Settings()
    results["settings"] = {k: getattr(s, k) for k in ("embed_model", "embed_dtype", "embed_batch_size",
                                                      "chunk_tokens", "chunk_overlap", "child_tokens", "faiss_type")}
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    try:
        corpus = make_corpus(tmp / f"corpus-{args.copies}x", args.copies)
        embedder = get_embedder(s)
        t = time.perf_counter()
        embedder.encode(["warm up the model"])  # model load excluded from the single-process time
        results["model_load_s"] = round(time.perf_counter() - t, 2)
        runs = results["runs"]
        if args.address is None:
            import torch

            threads = torch.get_num_threads()
            runs["single-process"] = [build_once(corpus, tmp / "index-local", LocalEngine(), quiet)
                                      for _ in range(args.rounds)]
            print(f"single-process: {runs['single-process']}", file=sys.stderr)
            if threads > 1:  # the same compute per chunk as one Ray worker: isolates Ray's own costs
                torch.set_num_threads(1)
                try:
                    runs["single-process-1-thread"] = [build_once(corpus, tmp / "index-local", LocalEngine(), quiet)
                                                       for _ in range(args.rounds)]
                finally:
                    torch.set_num_threads(threads)
                print(f"single-process-1-thread: {runs['single-process-1-thread']}", file=sys.stderr)

        from rag.index.ray_engine import RayCluster, RayEngine

        cluster = RayCluster(args.address, num_cpus=args.ray_cpus)
        t = time.perf_counter()
        cluster.ray()
        results["ray_start_s"] = round(time.perf_counter() - t, 2)
        results["ray_resources"] = {k: v for k, v in cluster.resources().items() if k in ("CPU", "GPU")}
        try:
            for w in workers_list:
                engine = RayEngine(cluster, workers=w, gpus_per_worker=args.gpus_per_worker)
                name = f"ray-{w}"
                runs[name] = [build_once(corpus, tmp / f"index-{name}", engine, quiet) for _ in range(args.rounds)]
                print(f"{name}: {runs[name]}", file=sys.stderr)
        finally:
            cluster.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


# ---- estimate and tables ----------------------------------------------------------------------

def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda r: r["wall_s"])


def estimate(results: dict[str, Any]) -> dict[str, Any]:
    """Minutes to index TARGET_CHUNKS on clusters of CPU nodes, from measured per-worker rates (a linear
    extrapolation, and labelled so). The rates come from the Ray run whose workers had the most CPU each
    (own cores / workers): on a shared machine a run whose workers time-share one core measures the
    neighbours, not a worker.

    embed: TARGET / (workers x embedding rate per worker); read+chunk: TARGET / (workers x chunking rate
    per worker); plus both stages' measured overheads, and the driver's seconds per chunk x TARGET (the
    driver is one process on one machine: walk, digests, de-duplication, FAISS, BM25, save).
    """
    runs = results["runs"]
    rays = [k for k in runs if k.startswith("ray-")]
    if not rays:
        return {}
    name = max(rays, key=lambda k: best(runs[k])["own_cores"] / int(k.split("-")[1]))
    r = best(runs[name])
    embed, read = stage_facts(r["stages"]["embed"]), stage_facts(r["stages"]["read"])
    per_chunk_read = read["rate"] * r["chunks"] / max(r["files"], 1)  # files/s -> chunks/s
    driver = r["driver_s"] / r["chunks"] * TARGET_CHUNKS
    out = {"from_run": name, "embed_per_worker": round(embed["rate"], 1), "chunk_per_worker": round(per_chunk_read, 1),
           "overhead_s": round(embed["overhead_s"] + read["overhead_s"], 1), "driver_s": round(driver), "rows": []}
    for nodes in (1, 4, 16, 64):
        workers = nodes * 32
        embed_min = TARGET_CHUNKS / (workers * embed["rate"]) / 60
        chunk_min = TARGET_CHUNKS / (workers * per_chunk_read) / 60
        total = embed_min + chunk_min + (out["overhead_s"] + driver) / 60
        out["rows"].append([nodes, workers, round(embed_min, 1), round(chunk_min, 1), round(total, 1)])
    return out


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [f"## Ray scale-out benchmark ({results['copies']}x corpus)", "",
           f"Machine: {m.get('cpu', '?')} x{m.get('cpus')} cores, torch {m.get('torch')}, avx512_bf16="
           f"{m.get('avx512_bf16')}; Ray cluster {results.get('address') or 'local (127.0.0.1)'} "
           f"{results.get('ray_resources')}, started in {results.get('ray_start_s')} s (not in the times below). "
           f"Settings: {results['settings']}. Load average at start {m.get('loadavg_at_start')}, at end "
           f"{results.get('loadavg_at_end')}.", ""]
    runs = results["runs"]
    ref = best(runs["single-process"])["wall_s"] if "single-process" in runs else None
    rows = []
    for name, rs in runs.items():
        r = best(rs)
        if r.get("stages"):
            e = stage_facts(r["stages"]["embed"])
            workers, rate, overhead = e["workers"], e["rate"], round(e["overhead_s"], 1)
        else:
            workers, rate, overhead = 1, r["embedded"] / max(r["embed_s"], 1e-9), None
        rows.append([name, len(rs), r["files"], r["chunks"], r["wall_s"], r["chunks_per_s"],
                     round(ref / r["wall_s"], 2) if ref else None, r["read_chunk_s"], r["embed_s"], r["driver_s"],
                     workers, round(rate, 1), overhead, r["own_cores"], r["other_cores"]])
    out.append(bu.md_table(["engine", "runs", "files", "chunks", "wall s (best)", "chunks/s", "speed-up vs single",
                            "read+chunk s", "embed s", "driver s", "embed workers", "embed chunks/s per worker",
                            "embed stage overhead s", "own cores", "other cores"], rows))
    out += ["", "Embed chunks/s per worker: Ray rows = chunks / (the workers' summed busy seconds in encode), "
            "i.e. one 1-CPU worker's rate while it computes; single-process = chunks / its embed stage (one "
            "process, all cores). Overhead = embed stage wall - busy seconds / workers (actor start and model "
            "load in each worker, scheduling, the idle tail). Own / other cores = cores this benchmark's "
            "process tree (driver + Ray's processes) / everything else kept busy during the run."]
    est = estimate(results)
    if est:
        out += ["", f"### Estimate for {TARGET_CHUNKS:,} chunks on CPU nodes (linear extrapolation of {est['from_run']})",
                "", f"Per 1-CPU worker, measured: embedding {est['embed_per_worker']} chunks/s, reading + chunking "
                f"{est['chunk_per_worker']} chunks/s; stage overheads {est['overhead_s']} s; driver ~{est['driver_s']} s "
                f"at {TARGET_CHUNKS:,} chunks (its measured seconds per chunk x {TARGET_CHUNKS:,}).", "",
                bu.md_table(["nodes (32 one-CPU workers each)", "workers", "embed min", "read+chunk min",
                             "total min (with overheads, driver)"], est["rows"])]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to run, comma-separated")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: a local one)")
    ap.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--no-wait", action="store_true", help="don't wait for other processes to go quiet")
    ap.add_argument("--out-name", default="ray_scaling")
    ap.add_argument("--render", type=Path, default=None, help="re-print the tables of a results JSON")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    whole = bu.LoadMeter()
    t_start = time.time()
    results = run(args)
    bu.finish_run(results, whole, t_start, render, args.out_name)


if __name__ == "__main__":
    main()
