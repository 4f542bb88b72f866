"""The markdown report of bench.index_build: `render(results)` turns the results JSON into its tables
(`python -m bench.index_build --render bench/results/index_build.json` re-prints a run's)."""

from __future__ import annotations

from typing import Any

from bench import benchutil as bu


def ratio(res: dict, a: str, b: str) -> tuple[float, float | None, float | None] | None:
    """(best a / best b, median over rounds of a/b within the same round, min CPU a / min CPU b) or None."""
    ra, rb = res["runs"].get(a), res["runs"].get(b)
    if not ra or not rb:
        return None
    paired = [x / y for x, y in zip(ra["samples"], rb["samples"])]
    import statistics

    cpu = min(ra["cpu_seconds"]) / min(rb["cpu_seconds"]) if ra.get("cpu_seconds") and rb.get("cpu_seconds") else None
    return ra["best"] / rb["best"], (statistics.median(paired) if len(paired) > 1 else None), cpu


def render(R: dict[str, Any]) -> str:
    out = []
    c = R["copies"]
    m = R["machine"]
    out.append(f"## Index build benchmark{' (QUICK smoke mode: 3 small files only)' if R['quick'] else ''}\n")
    out.append(f"Machine: {m.get('cpu')} x{m['cpus']} cores, torch {m.get('torch')} ({m.get('torch_threads')} threads), "
               f"avx512_bf16={m.get('avx512_bf16')}. Load avg at start {m['loadavg_at_start']}, at end {R['loadavg_at_end']}; "
               f"other processes kept ~{R['load_whole_run']['other_cores']} of {m['cpus']} cores busy on average "
               f"over the run ({R['total_seconds'] / 60:.1f} min).")
    if m["busy_other_processes_at_start"] or R["busy_other_processes_at_end"]:
        out.append(f"Busy other processes at start: {m['busy_other_processes_at_start']}; at end: {R['busy_other_processes_at_end']}.")
    out.append(f"Imports (torch, sentence-transformers, faiss, bm25s, rag): {R['import_seconds']:.2f}s. Model load (excluded from build times): " + ", ".join(f"{k} {v:.2f}s" for k, v in R["load_seconds"].items()) + ".")
    out.append(f"Plain encode batch size {R['plain_batch_size']} (= ours); LangChain uses sentence-transformers' default 32. "
               f"Our settings (shipped defaults): {R.get('settings')}.")
    if R.get("wait_for_quiet"):
        out.append(f"Before each timed run the script waited (up to {R['wait_for_quiet']['max_wait']:.0f}s) for other processes "
                   f"to use < {R['wait_for_quiet']['threshold']} cores; 'runs started under load' counts the runs where that wait timed out.")
    out.append("")

    for key in ("small", "large"):
        res = R[key]
        if not res["runs"]:
            continue
        out.append(f"### a/b/c) Full build time, {res['label']} corpus ({res['files']} files, {res['chunks']} chunks; "
                   f"best of the runs of each pipeline, order rotated each round)\n")
        base = res["runs"].get("plain-bf16")
        rows = []
        for name, run in res["runs"].items():
            loud = sum(1 for w in run["waits"] if w and not w.get("quiet"))
            cpu = min(run.get("cpu_seconds") or [float("nan")])
            rows.append([name + (" (model replaced by a lookup of the 1x vectors)" if name.endswith("-nomodel") else "")
                         + (" (diagnostic: encode() per 256 texts, as build_index)" if name.endswith("-sliced") else ""),
                         len(run["samples"]), run["best"], run["median"], run["best"] / base["best"] if base else None,
                         res["chunks"] / run["best"], cpu, " / ".join(f"{x:.2f}" for x in run["other_cores"]),
                         f"{loud}/{len(run['samples'])}"])
        out.append(bu.md_table(["pipeline", "runs", "best s", "median s", "x plain-bf16 (best)", "chunks/s (best)",
                                "CPU s (min, all threads)", "other cores per run", "runs started under load"], rows))
        if "estimated_real_build_s" in res:
            est = res["estimated_real_build_s"]
            nonemb = res["runs"]["ours-bf16-nomodel"]["best"]
            out.append(f"\nThe -nomodel row is build_index with the model swapped for a lookup: every non-embedding cost "
                       f"at this size. It + {res['chunks']} chunks x the 1x embed time per chunk "
                       f"({res['embed_per_chunk_1x_s'] * 1000:.1f} ms) = estimated real build {est:.1f}s, of which "
                       f"non-embedding {100 * nonemb / est:.1f}%."
                       + (f" Measured real ours-bf16: {res['runs']['ours-bf16']['best']:.1f}s." if "ours-bf16" in res["runs"] else ""))
        ratios = []
        for label, a, b in [("pipeline overhead bf16 = ours-bf16 / plain-bf16", "ours-bf16", "plain-bf16"),
                            ("pipeline overhead fp32 = ours-fp32 / plain-fp32", "ours-fp32", "plain-fp32"),
                            ("LangChain default (fp32) / ours default (bf16)  [goal >= 2]", "langchain-fp32", "ours-bf16"),
                            ("LangChain fp32 / ours fp32 (same dtype)", "langchain-fp32", "ours-fp32"),
                            ("LangChain bf16 / ours bf16 (same dtype)", "langchain-bf16", "ours-bf16"),
                            ("plain fp32 / plain bf16 (bf16 encode speed-up)", "plain-fp32", "plain-bf16"),
                            ("plain bf16 in 256-text slices / plain bf16 in one call", "plain-bf16-sliced", "plain-bf16"),
                            ("ours-bf16 / plain bf16 in 256-text slices", "ours-bf16", "plain-bf16-sliced")]:
            v = ratio(res, a, b)
            if v is not None:
                ratios.append([label, v[0], v[1], v[2]])
        if ratios:
            out.append("")
            out.append(bu.md_table(["ratio", "wall: best / best", "wall: median of same-round ratios",
                                    "CPU time: min / min"], ratios))
        for name in ("ours-bf16", "ours-bf16-nomodel"):
            st = res["runs"].get(name, {}).get("stages_of_best")
            if st:
                tot = sum(st.values())
                out.append(f"\nWhere {name}'s best build went: " + ", ".join(f"{k} {v:.2f}s ({100 * v / tot:.0f}%)" for k, v in st.items()))
        out.append("")

    for key, lbl in (("micro_small", "1x"), ("micro_large", f"{c}x")):
        if key in R:
            mm = R[key]
            out.append(f"Non-embedding parts timed alone ({lbl}): " + ", ".join(f"{k} {v:.3f}s" for k, v in mm.items()) + ".")
    cs = R["chunking_seconds"]
    out.append(f"Chunking alone (read + split, no embedding): 1x {cs['small']:.2f}s; {c}x {cs['large']:.2f}s with one chunker "
               f"(as build_index: its token-count memo hits on the repeated copies), {cs['large_fresh_chunker_per_file']:.2f}s "
               f"with a fresh chunker per file (what {c}x distinct content would cost).\n")

    out.append("### d) Retrieval quality on eval/dev_questions.jsonl (hit = a top-k chunk's text contains an evidence quote)\n")
    if R["quick"]:
        out.append("(Quick mode indexes 3 quiz/question files only, which hold no evidence passages: recall 0 is expected.)\n")
    else:
        out.append("(29 questions: one question = 3.4 points of recall. On the large copy every chunk exists 20 times, "
                   "so identical copies of the best chunk fill the top-k and recall@5 falls to about recall@1.)\n")
    for lbl, rows in R["recall"].items():
        out.append(f"{lbl} corpus:\n")
        out.append(bu.md_table(["retriever", "n", "recall@1", "recall@5", "recall@10", "MRR@10"],
                               [[k, v["n"], v["recall@1"], v["recall@5"], v["recall@10"], v["mrr@10"]] for k, v in rows.items()]))
        lc = rows.get("langchain-fp32 (L2 flat)")
        if lc:
            diffs = [f"{k}: {100 * (v['recall@5'] - lc['recall@5']):+.1f} pts" for k, v in rows.items() if k.startswith("ours") and "bm25" not in k]
            out.append("\nrecall@5 vs LangChain fp32 (goal: within 1 point): " + "; ".join(diffs))
        out.append("")

    out.append("### e) bf16 vs fp32 embeddings (1x corpus chunks)\n")
    out.append(bu.md_table(["pair", "min cosine", "1st pct", "mean cosine"],
                           [[k, f"{v['min']:.5f}", f"{v['p01']:.5f}", f"{v['mean']:.5f}"] for k, v in R["cosine"].items()]))
    out.append("\nPlain encode batch-size sweep (first chunks of corpus/):\n")
    out.append(bu.md_table(["dtype", "batch", "n", "s", "chunks/s"],
                           [[r["dtype"], r["batch_size"], r["n"], r["seconds"], r["chunks_per_s"]] for r in R["batch_sweep"]]))
    out.append("")

    if "memory" in R:
        mem = R["memory"]
        out.append(f"### f) Peak RSS, each pipeline alone in a fresh subprocess ({mem['corpus']} corpus, {mem['chunks']} chunks)\n")
        base = mem["pipelines"].get("imports-only", {}).get("peak_rss_mb")
        rows = []
        for name, r in mem["pipelines"].items():
            if "error" in r:
                rows.append([name, "error", r["error"], "", "", ""])
                continue
            plain = mem["pipelines"].get("plain-" + name.split("-")[-1], {}).get("peak_rss_mb")
            rows.append([name, r["peak_rss_mb"], r.get("rss_after_load_mb"), (r["peak_rss_mb"] - base) if base else None,
                         (r["peak_rss_mb"] / plain) if plain and name != "imports-only" else None, r["seconds"]])
        out.append(bu.md_table(["pipeline", "peak RSS MiB", "RSS after model load MiB", "peak - (python+torch+ST imports)",
                                "x plain same dtype", "build s (1 run)"], rows))
        out.append("")

    out.append("### g) Re-index (ours, bf16) after a change, vs full build from scratch\n")
    rows = []
    for lbl, r in R["reindex"].items():
        for run in r["runs"]:
            rows.append([lbl, run["case"], run["median"], run["best"], run["fraction_of_full_build"],
                         "/".join(str(x) for x in run["chunks_embedded"]), r["full_build_best_s"]])
    out.append(bu.md_table(["corpus", "case", "median s", "best s", "median / full build", "chunks embedded", "full build s"], rows))
    if any(r.get("full_build_is_estimate") for r in R["reindex"].values()):
        out.append("\n(Where the large copy was not embedded for real, 'full build' is the estimated real build above.)")
    out.append("\n(The edited file is the largest one; 'edit 1st paragraph' inserts a sentence at the top, shifting the rest of its section.)")
    return "\n".join(out)
