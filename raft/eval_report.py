"""The summary of a `raft eval` run: per model and setting the mean scores with 95% bootstrap confidence
intervals, the paired comparison of every model with a baseline on the same questions, the markdown tables
and the chart with error bars.

Intervals and paired deltas come from rag.evaluation.bootstrap (percentile bootstrap over the questions,
seeded with the run's --seed). Quote validity is a mean over the answers that quote (its interval too), so
its `n` is the number of quoting answers, shown next to it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, TypedDict

from rag.common.atomic import write_bytes_atomic
from rag.errors import RagError
from rag.evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    METHOD,
    bootstrap_ci,
    paired_comparison,
)

SETTING_LABELS = {"oracle": "oracle + distractors", "distractors": "distractors only", "closed": "closed book",
                  "retrieved": "retrieved top-k"}
INTERVAL_METRICS = ("f1", "em", "format", "quote_valid")  # the scores that get a confidence interval
COMPARED_METRIC = "f1"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _cell(rs: list[dict], setting: str, resamples: int, seed: int) -> dict[str, Any]:
    """The scores of one model in one setting, each interval-scored metric with its `<name>_ci`."""
    quoting = [r for r in rs if r["n_quotes"]]
    per_question = {
        "f1": [float(r["f1"]) for r in rs],
        "em": [float(r["em"]) for r in rs],
        "format": [float(r["compliant"]) for r in rs],
        "quote_valid": [] if setting == "closed" else
        [float(r["quotes_valid"]) for r in quoting if r["quotes_valid"] is not None],
    }
    cell: dict[str, Any] = {"n": len(rs)}
    for name, values in per_question.items():
        cell[name] = _mean(values)  # None when empty: closed book, or no answer quoted
        ci = bootstrap_ci(values, resamples=resamples, seed=seed)
        cell[f"{name}_ci"] = list(ci) if ci is not None else None
    cell["quote_valid_n"] = len(per_question["quote_valid"])
    cell["quote_rate"] = _mean([float(bool(r["n_quotes"])) for r in rs])
    cell["answer_tokens"] = _mean([float(r["answer_tokens"]) for r in rs])
    cell["oracle_shown"] = _mean([float(r.get("oracle_position", -1) >= 0) for r in rs])
    return cell


def _groups(rows: Iterable[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["setting"]), []).append(r)
    return groups


def summarize(rows: Iterable[dict], models: list[str], settings: list[str], *, resamples: int = DEFAULT_RESAMPLES,
              seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {setting: scores}} from result rows.

    Scores: n, f1, em, format (`<ANSWER>:` rate), quote_valid (of the quoting answers; None closed book or
    when none quotes) each with `<name>_ci` = [low, high] (95% percentile bootstrap over the questions,
    None below two values), quote_valid_n, quote_rate, answer_tokens, oracle_shown (share of answers whose
    documents held the oracle: 1 oracle, 0 distractors/closed, the retriever's oracle recall@k retrieved).
    """
    groups = _groups(rows)
    return {m: {s: _cell(groups.get((m, s), []), s, resamples, seed) for s in settings} for m in models}


def check_baseline(baseline: str, models: list[str]) -> None:
    """RagError unless `baseline` is one of `models` (checked before any answer is made)."""
    if baseline not in models:
        raise RagError(f"--baseline {baseline} is not one of the evaluated --models ({', '.join(models)}): "
                       "name one of them")


def compare(rows: Iterable[dict], models: list[str], settings: list[str], baseline: str, *,
            resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Every other model against `baseline` on the same questions: per-question token-F1 deltas.

    :returns: {"baseline", "metric": "f1", "pairs": {model: {setting: paired_comparison(...)}}} (see
        rag.evaluation.bootstrap.paired_comparison: n, mean_delta, ci, wins, ties, losses); only questions
        both models answered count.
    :raises RagError: `baseline` is not one of `models`.
    """
    check_baseline(baseline, models)
    groups = _groups(rows)
    pairs: dict[str, dict[str, Any]] = {}
    for m in models:
        if m == baseline:
            continue
        pairs[m] = {}
        for s in settings:
            base = {r["id"]: float(r[COMPARED_METRIC]) for r in groups.get((baseline, s), [])}
            mine = {r["id"]: float(r[COMPARED_METRIC]) for r in groups.get((m, s), [])}
            ids = sorted(base.keys() & mine.keys())
            pairs[m][s] = paired_comparison([mine[i] for i in ids], [base[i] for i in ids],
                                            resamples=resamples, seed=seed)
    return {"baseline": baseline, "metric": COMPARED_METRIC, "pairs": pairs}


class BootstrapInfo(TypedDict):
    """summary.json's "bootstrap": how its intervals were made (a TypedDict: the JSON is unchanged)."""

    method: str  # "percentile" (scipy.stats.bootstrap; Efron & Tibshirani 1993, ch. 13)
    resamples: int  # bootstrap resamples per interval
    confidence: float  # the intervals' level, a fraction (0.95)
    seed: int  # seeds the resampling: the same data and seed give the same intervals
    unit: str  # what is resampled: "question"
    paired_metric: str  # the score of the paired comparison with the baseline ("f1")


def bootstrap_info(resamples: int, seed: int) -> BootstrapInfo:
    """What summary.json says about how its intervals were made (see `BootstrapInfo` for each key)."""
    return {"method": METHOD, "resamples": resamples, "confidence": DEFAULT_CONFIDENCE, "seed": seed,
            "unit": "question", "paired_metric": COMPARED_METRIC}


# --------------------------------------------------------------------------- text


def _num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _with_ci(value: float | None, ci: list[float] | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return fmt.format(value) + (f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else "")


def format_markdown(summary: dict[str, Any]) -> str:
    """The tables: scores with intervals (a row per setting and model), the paired comparison, the extras."""
    models, settings, res = summary["models"], summary["settings"], summary["results"]
    n = summary["questions"]
    boot = summary.get("bootstrap") or bootstrap_info(DEFAULT_RESAMPLES, summary.get("seed", 0))
    lines = [f"# RAFT evaluation: {n} question{'s' if n != 1 else ''} ({summary['split_used']} split of "
             f"`{summary['source']}`)", ""]
    if summary.get("note"):
        lines += [f"Note: {summary['note']}.", ""]
    if summary.get("retrieval"):
        r = summary["retrieval"]
        lines += [f"Retrieved setting: top {r['k']} passages ({r['mode']}) from the index `{r['index_dir']}`.", ""]
    lines += [f"Mean [{boot['confidence']:.0%} CI]; intervals: {boot['method']} bootstrap over the questions, "
              f"{boot['resamples']:,} resamples, seed {boot['seed']} (none below two values). Quote validity: "
              "share of the quoting answers whose quotes are all in the documents shown (n = quoting answers; "
              "– = none quoted, or closed book).", "",
              "| setting | model | n | token F1 | exact match | `<ANSWER>:` format | quote validity (n) |",
              "|---|---|---|---|---|---|---|"]
    for s in settings:
        for m in models:
            c = res[m][s]
            cells = [_with_ci(c[k], c[f"{k}_ci"]) for k in INTERVAL_METRICS]
            cells[-1] += f" ({c['quote_valid_n']})"
            lines.append(f"| {SETTING_LABELS[s]} | `{m}` | {c['n']} | " + " | ".join(cells) + " |")
    comparison = summary.get("comparison")
    if comparison and comparison["pairs"]:
        lines += ["", f"Paired comparison with `{comparison['baseline']}` on the same questions: mean per-question "
                  "token-F1 delta (model − baseline) [CI], and questions won / tied / lost.", "",
                  "| setting | model | n | ΔF1 [CI] | wins / ties / losses |", "|---|---|---|---|---|"]
        for s in settings:
            for m, per in comparison["pairs"].items():
                p = per[s]
                lines.append(f"| {SETTING_LABELS[s]} | `{m}` | {p['n']} | {_with_ci(p['mean_delta'], p['ci'], True)} "
                             f"| {p['wins']} / {p['ties']} / {p['losses']} |")
    lines += ["", "Answers quoting at all / mean answer length in tokens / share of questions whose documents "
              "held the oracle.", "", "| setting | " + " | ".join(f"`{m}`" for m in models) + " |",
              "|---|" + "---|" * len(models)]
    for s in settings:
        cells = [f"{_num(res[m][s]['quote_rate'])} / {_num(res[m][s]['answer_tokens'], 1)} / "
                 f"{_num(res[m][s].get('oracle_shown'))}" for m in models]
        lines.append(f"| {SETTING_LABELS[s]} | " + " | ".join(cells) + " |")
    lines += ["", f"Greedy decoding, at most {summary['max_new_tokens']} new tokens; split "
              f"{summary.get('split', '-')} seed {summary['seed']}."]
    return "\n".join(lines) + "\n"


def write_chart(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars of token F1 per setting, one per model, with the 95% interval as error bars; atomic PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    models, settings, res = summary["models"], summary["settings"], summary["results"]
    width = 0.8 / max(1, len(models))
    fig = Figure(figsize=(max(6.0, 1.6 * len(settings) * max(1, len(models)) ** 0.5 + 2), 4.2))
    ax = fig.subplots()
    for j, m in enumerate(models):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(settings))]
        ys = [res[m][s]["f1"] or 0.0 for s in settings]
        cis = [res[m][s].get("f1_ci") or [y, y] for s, y in zip(settings, ys)]
        err = [[max(0.0, y - lo) for y, (lo, _) in zip(ys, cis)], [max(0.0, hi - y) for y, (_, hi) in zip(ys, cis)]]
        ax.bar(xs, ys, width * 0.95, label=m[-40:], yerr=err, capsize=3, error_kw={"elinewidth": 1})
        for x, s, (_, hi) in zip(xs, settings, cis):  # the value above its interval, clear of the error bar
            ax.text(x, max(hi, res[m][s]["f1"] or 0.0) + 0.015, _num(res[m][s]["f1"]), ha="center", fontsize=8)
    ax.set_xticks(range(len(settings)), [SETTING_LABELS[s] for s in settings])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("token F1 of the final answer (95% CI)")
    n = summary["questions"]
    ax.set_title(f"RAFT eval: {n} held-out question{'s' if n != 1 else ''}")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes_atomic(path, buf.getvalue())


__all__ = ["SETTING_LABELS", "INTERVAL_METRICS", "summarize", "check_baseline", "compare", "BootstrapInfo",
           "bootstrap_info", "format_markdown", "write_chart"]
