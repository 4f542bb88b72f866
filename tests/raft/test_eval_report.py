"""Bootstrap intervals (rag.evaluation.bootstrap) and the `raft eval` summary built on them (raft.eval_report):
known answers, coverage on simulated data, the paired comparison, the tables and the chart."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from raft.eval_report import compare, format_markdown, summarize, write_chart
from rag.errors import RagError
from rag.evaluation.bootstrap import bootstrap_ci, paired_comparison

# --------------------------------------------------------------------------- bootstrap


def test_constant_data_give_a_zero_width_interval() -> None:
    assert bootstrap_ci([0.5] * 30) == (0.5, 0.5)
    assert bootstrap_ci([0.0, 0.0]) == (0.0, 0.0)
    p = paired_comparison([0.7] * 12, [0.7] * 12)
    assert p == {"n": 12, "mean_delta": 0.0, "ci": [0.0, 0.0], "wins": 0, "ties": 12, "losses": 0}


def test_too_few_values_give_no_interval() -> None:
    assert bootstrap_ci([]) is None and bootstrap_ci([0.3]) is None
    assert paired_comparison([], []) == {"n": 0, "mean_delta": None, "ci": None, "wins": 0, "ties": 0, "losses": 0}
    one = paired_comparison([1.0], [0.25])
    assert one["mean_delta"] == 0.75 and one["ci"] is None and one["wins"] == 1


def test_interval_brackets_the_mean_is_seeded_and_shrinks_with_n() -> None:
    rng = random.Random(1)
    small = [float(rng.random() < 0.4) for _ in range(25)]
    big = small * 16  # same proportion, 16x the questions
    lo, hi = bootstrap_ci(small, seed=3)
    assert lo < sum(small) / len(small) < hi and 0.0 <= lo and hi <= 1.0
    assert bootstrap_ci(small, seed=3) == (lo, hi)  # same seed, same interval
    assert bootstrap_ci(small, seed=4) != (lo, hi)  # another seed resamples differently
    blo, bhi = bootstrap_ci(big, seed=3)
    assert (bhi - blo) < 0.4 * (hi - lo)  # width ~ 1/sqrt(n): 1/4 expected
    # close to the normal approximation for a proportion at n = 400: mean +- 1.96 sd / sqrt(n)
    p, n = sum(big) / len(big), len(big)
    half = 1.96 * (p * (1 - p) / n) ** 0.5
    assert blo == pytest.approx(p - half, abs=0.01) and bhi == pytest.approx(p + half, abs=0.01)


def test_coverage_on_simulated_questions_is_near_95_percent() -> None:
    """200 simulated evaluations of 60 questions (F1-like scores from a Beta(2, 3), true mean 0.4): the 95%
    interval should hold the true mean in about 95% of them (a binomial band of ±3.5 points around 0.95,
    widened for the percentile method's known slight under-coverage at small n)."""
    rng = np.random.default_rng(7)
    hits = 0
    for trial in range(200):
        lo, hi = bootstrap_ci(rng.beta(2, 3, size=60).tolist(), resamples=1000, seed=trial)
        hits += lo <= 0.4 <= hi
    assert 0.89 <= hits / 200 <= 0.99, hits


def test_paired_comparison_counts_and_sees_a_consistent_gain() -> None:
    rng = random.Random(2)
    base = [rng.random() for _ in range(40)]
    model = [min(1.0, b + 0.1) for b in base]  # better on every question by up to 0.1
    p = paired_comparison(model, base, seed=0)
    assert p["n"] == 40 and p["wins"] + p["ties"] + p["losses"] == 40
    assert p["wins"] == sum(m > b for m, b in zip(model, base)) and p["losses"] == 0
    assert p["mean_delta"] == pytest.approx(sum(m - b for m, b in zip(model, base)) / 40)
    assert 0.0 < p["ci"][0] <= p["mean_delta"] <= p["ci"][1]
    # the same scores in reverse: the delta is mirrored
    q = paired_comparison(base, model, seed=0)
    assert q["mean_delta"] == pytest.approx(-p["mean_delta"]) and q["losses"] == p["wins"]
    with pytest.raises(ValueError, match="same questions"):
        paired_comparison([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.1, float("nan")])


# --------------------------------------------------------------------------- the summary


def _row(model: str, setting: str, qid: str, f1: float, *, quotes: int = 0, valid: bool | None = None,
         compliant: bool = True, oracle: int = 0) -> dict:
    return {"model": model, "setting": setting, "id": qid, "f1": f1, "em": float(f1 == 1.0), "compliant": compliant,
            "n_quotes": quotes, "quotes_valid": valid, "answer_tokens": 10, "oracle_position": oracle}


ROWS = ([_row("base", "oracle", f"q{i}", 0.2, quotes=1, valid=i % 2 == 0, compliant=i < 2) for i in range(4)]
        + [_row("tuned", "oracle", f"q{i}", f, quotes=1, valid=True) for i, f in enumerate([1.0, 0.6, 0.2, 0.4])]
        + [_row("base", "retrieved", f"q{i}", 0.0, oracle=-1 if i else 2) for i in range(4)]
        + [_row("tuned", "retrieved", f"q{i}", 0.0, oracle=-1 if i else 2) for i in range(4)])


def test_summary_cells_have_means_and_intervals() -> None:
    res = summarize(ROWS, ["base", "tuned"], ["oracle", "retrieved"], resamples=500, seed=0)
    base, tuned = res["base"]["oracle"], res["tuned"]["oracle"]
    assert base["n"] == 4 and base["f1"] == pytest.approx(0.2) and base["f1_ci"] == [pytest.approx(0.2)] * 2
    assert base["format"] == 0.5 and base["format_ci"][0] <= 0.5 <= base["format_ci"][1]
    assert base["quote_valid"] == 0.5 and base["quote_valid_n"] == 4
    assert tuned["f1"] == pytest.approx(0.55) and tuned["em"] == 0.25
    assert tuned["f1_ci"][0] < 0.55 < tuned["f1_ci"][1] and tuned["quote_valid_ci"] == [1.0, 1.0]
    retrieved = res["tuned"]["retrieved"]
    assert retrieved["oracle_shown"] == 0.25 and retrieved["quote_valid"] is None and retrieved["quote_valid_n"] == 0
    assert retrieved["quote_valid_ci"] is None


def test_comparison_pairs_the_same_questions() -> None:
    rows = ROWS + [_row("tuned", "oracle", "q9", 1.0)]  # a question the baseline never answered: left out
    c = compare(rows, ["base", "tuned"], ["oracle", "retrieved"], "base", resamples=500, seed=0)
    assert c["baseline"] == "base" and list(c["pairs"]) == ["tuned"]
    p = c["pairs"]["tuned"]["oracle"]
    assert p["n"] == 4 and p["mean_delta"] == pytest.approx(0.35) and (p["wins"], p["ties"], p["losses"]) == (3, 1, 0)
    assert c["pairs"]["tuned"]["retrieved"]["ties"] == 4
    with pytest.raises(RagError, match="--baseline other is not one of"):
        compare(rows, ["base", "tuned"], ["oracle"], "other")


def test_markdown_and_chart(tmp_path: Path) -> None:
    models, settings = ["base", "tuned"], ["oracle", "retrieved"]
    summary = {"source": "data", "split_used": "test", "split": "0.8,0.1,0.1", "note": None, "seed": 0,
               "questions": 4, "max_new_tokens": 8, "models": models, "settings": settings,
               "retrieval": {"k": 5, "mode": "hybrid", "index_dir": "/idx"},
               "bootstrap": {"method": "percentile", "resamples": 500, "confidence": 0.95, "seed": 0},
               "results": summarize(ROWS, models, settings, resamples=500),
               "comparison": compare(ROWS, models, settings, "base", resamples=500)}
    md = format_markdown(summary)
    assert "| oracle + distractors | `tuned` | 4 | 0.55 [" in md
    assert "| retrieved top-k | `base` | 4 | 0.00 [0.00, 0.00] |" in md
    assert "Paired comparison with `base`" in md and "| oracle + distractors | `tuned` | 4 | +0.35 [" in md
    assert "| 3 / 1 / 0 |" in md and "top 5 passages (hybrid)" in md and "500 resamples" in md
    json.dumps(summary)  # what summary.json holds is plain JSON
    write_chart(summary, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
