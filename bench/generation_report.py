"""The markdown report of bench.generation: `render(results)` turns a run's results into its tables."""

from __future__ import annotations

from typing import Any

from bench.benchutil import fmt, md_table


def render(results: dict[str, Any]) -> str:
    """The markdown tables of a run (parts that did not run are left out)."""
    a = results["args"]
    out: list[str] = []
    if results.get("engines"):
        out += [(f"## Generation speed ({results['prompt_tokens']}-token RAG prompt, {a['tokens']} new tokens, "
                 f"greedy, repetition penalty 1.1, {a['threads']} thread(s), median of {a['rounds']} interleaved "
                 "rounds)"), ""]
        out.append(md_table(
            ["engine", "prefill s", "prefill / transformers", "decode tok/s", "decode / transformers",
             "greedy tokens equal to transformers", "load s"],
            [[r["engine"], r["prefill_s"], r["prefill_ratio"], r["decode_tok_s"], r["decode_ratio"],
              f"{r['same_prefix']}/{r['tokens']}", r["load_s"]] for r in results["engines"]]))
    for kind, why in results.get("skipped", {}).items():
        out.append(f"\n{kind}: not measured ({why})")
    if results.get("fidelity"):
        out += ["", (f"## Greedy answers to the {results['fidelity'][0]['questions']} dev questions (RAG prompt, "
                     f"up to {a['fidelity_tokens']} tokens, EOS allowed)"), ""]
        out.append(md_table(["engine", "same text as transformers", "token F1 vs transformers' text",
                             "token F1 vs the reference answer"],
                            [[f["engine"], f["same_text"], f["f1_vs_transformers"], f["f1_vs_gold"]]
                             for f in results["fidelity"]]))
    if "load_engines" in results:
        out.append(f"\nOther processes kept {fmt(results['load_engines'].get('other_cores'))} of the 2 cores busy "
                   "during part 1 (ratios come from the same rounds, so they hold under that load; absolute times "
                   "do not).")
    if results.get("warm"):
        out += ["", (f"## Grounded answer in a warm process (five passages, quote chosen, then the answer; median of "
                     f"{a['warm_rounds']} interleaved questions)"), ""]
        out.append(md_table(["path", "first answer piece s", "whole answer s"],
                            [[w["path"], w["first_piece_s"], w["total_s"]] for w in results["warm"]]))
    if results.get("cold"):
        threads = a.get("cold_threads") or "the default number of"
        out += ["", (f"## Fresh `rag ask` (new process each run, up to {a['ask_tokens']} tokens, {threads} threads, "
                     f"median of {a['cold_runs']})"), ""]
        out.append(md_table(["path", "first answer byte s", "whole answer + sources s", "answer chars"],
                            [[c["decoder"], c["first_byte_s"], c["total_s"], c["answer_chars"]]
                             for c in results["cold"]]))
    if results.get("server"):
        out += ["", (f"## `rag serve` throughput (streamed dev questions, up to {a['server_tokens']} tokens, closed "
                     "loop: C clients share max(8, 2C) requests)"), ""]
        out.append(md_table(["answers", "path", "concurrency", "requests ok", "requests/s", "completion tok/s",
                             "throughput / concurrency 1", "time to first piece p50 s", "longest gap between pieces s"],
                            [[r["answer_mode"], r["decoder"], r["concurrency"], f"{r['ok']}/{r['requests']}",
                              r["req_per_s"], r["tok_per_s"], r["throughput_ratio"], r["ttft_p50_s"], r["max_gap_s"]]
                             for r in results["server"]]))
    if results.get("quality_md"):
        out += ["", results["quality_md"]]
    if results.get("cold") or results.get("server"):
        whole = results.get("load_whole_run", {})
        out.append(f"\nOther processes kept {fmt(whole.get('other_cores'))} of the 2 cores busy over the whole run.")
    return "\n".join(out)
