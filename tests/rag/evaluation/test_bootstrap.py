"""Bootstrap confidence intervals (rag.evaluation.bootstrap): known answers, coverage on simulated data,
the paired comparison."""

from __future__ import annotations

import random

import numpy as np
import pytest

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
