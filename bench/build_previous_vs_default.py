"""Index build time of the shipped defaults against the previous defaults, same code, same run.

The previous defaults are the Settings overrides that switch the packed-passage indexing changes off: a chunk per
heading section (no packing), the heading path embedded, no child windows. (The previous chunker did not
keep the heading line in the chunk text; this one does, a few tokens per chunk.) Each round builds both
from scratch into fresh temp index dirs, in rotated order, after waiting for the machine to go quiet;
the goal is default / previous <= 1.3 (wall time, best of the rounds, and median of same-round ratios).
Corpora: corpus/ (1x) and a 5x copy (every file copied into copy0/..copy4/, sources differ so every
chunk is embedded). The embedder is loaded and warmed up before any timing.

Run (from the project folder, ~3 min when idle):
    . .venv/bin/activate
    python -m bench.build_previous_vs_default [--rounds 3] [--copies 5] [--no-wait]
Writes bench/results/build_previous_vs_default.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import benchutil as bu

PREVIOUS = {"merge_sections": False, "embed_headings": True, "child_tokens": 0}
GOAL = 1.3


def build_once(corpus: Path, overrides: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from rag.api import index_corpus
    from rag.config import Settings

    index_dir = Path(tempfile.mkdtemp(prefix="idx-", dir=tmp))
    settings = Settings(index_dir=index_dir, corpus_dir=corpus, **overrides)
    meter = bu.LoadMeter()
    cpu0 = bu._own_cpu_seconds()
    t0 = time.perf_counter()
    report = index_corpus(corpus, settings, rebuild=True)
    seconds = time.perf_counter() - t0
    cpu = bu._own_cpu_seconds() - cpu0
    load = meter.stop()
    shutil.rmtree(index_dir, ignore_errors=True)
    return {"seconds": seconds, "cpu_s": cpu, "chunks": report.chunks_total, "other_cores": load["other_cores"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--no-wait", action="store_true")
    ap.add_argument("--out-name", default="build_previous_vs_default")
    args = ap.parse_args()
    whole, t_start = bu.LoadMeter(), time.time()

    from rag.api import get_embedder
    from rag.config import Settings

    get_embedder(Settings(index_dir=Path(tempfile.gettempdir()) / "unused")).encode(["warm up"] * 4)
    results: dict[str, Any] = {"script": "bench/build_previous_vs_default.py", "args": vars(args),
                               "machine": bu.machine_info(), "previous": PREVIOUS, "corpora": {}}
    with tempfile.TemporaryDirectory(prefix="rag-bench-build-") as td:
        tmp = Path(td)
        one = tmp / "corpus"
        shutil.copytree(bu.ROOT / "corpus", one)
        many = tmp / f"corpus{args.copies}x"
        for i in range(args.copies):  # a first line per copy: identical files would be indexed once
            shutil.copytree(bu.ROOT / "corpus", many / f"copy{i}")
            for f in (many / f"copy{i}").iterdir():
                f.write_text(f"Copy {i} of the course.\n\n" + f.read_text(encoding="utf-8"), encoding="utf-8")
        for label, corpus in (("1x", one), (f"{args.copies}x", many)):
            runs: dict[str, list[dict[str, Any]]] = {"previous": [], "default": []}
            for r in range(args.rounds):
                order = ["previous", "default"] if r % 2 == 0 else ["default", "previous"]
                for name in order:
                    if not args.no_wait:
                        bu.wait_for_quiet(max_wait=60.0)
                    runs[name].append(build_once(corpus, PREVIOUS if name == "previous" else {}, tmp))
                print(f"{label} round {r + 1}: " + ", ".join(f"{n} {runs[n][-1]['seconds']:.2f}s" for n in runs),
                      file=sys.stderr)
            best = {n: min(x["seconds"] for x in v) for n, v in runs.items()}
            cpu = {n: min(x["cpu_s"] for x in v) for n, v in runs.items()}
            same_round = [d["seconds"] / p["seconds"] for d, p in zip(runs["default"], runs["previous"])]
            results["corpora"][label] = {"runs": runs, "best": best, "ratio_best": best["default"] / best["previous"],
                                         "ratio_median": statistics.median(same_round), "cpu_best": cpu,
                                         "ratio_cpu": cpu["default"] / cpu["previous"]}
    bu.finish_run(results, whole, t_start, render, args.out_name)


def render(R: dict[str, Any]) -> str:
    m = R["machine"]
    out = ["## Index build: shipped defaults vs previous defaults (issue 13)\n",
           (f"Machine: {m.get('cpu')} x{m['cpus']}; other processes kept ~{R['load_whole_run']['other_cores']} cores "
            f"busy over the run ({R['total_seconds'] / 60:.1f} min). Previous = Settings overrides {R['previous']}. "
            f"Goal: default / previous <= {GOAL}.\n")]
    rows = []
    for label, c in R["corpora"].items():
        for name in ("previous", "default"):
            v = c["runs"][name]
            rows.append([label, name, v[0]["chunks"], c["best"][name], statistics.median(x["seconds"] for x in v),
                         c["cpu_best"][name], " / ".join(f"{x['other_cores']:.2f}" for x in v)])
        rows.append([label, "default / previous", "", c["ratio_best"], c["ratio_median"], c["ratio_cpu"],
                     "wall best/best, wall median of rounds, CPU min/min"])
    out.append(bu.md_table(["corpus", "build", "chunks", "best s", "median s", "CPU s (min)", "other cores per run"], rows))
    out.append("\nThis machine is shared: with other processes busy, CPU time (this process, all threads) is the "
               "steadier measure; wall time is what a user waits.")
    return "\n".join(out)


if __name__ == "__main__":
    main()
