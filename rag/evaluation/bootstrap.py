"""Bootstrap confidence intervals of a mean, and the paired comparison of two systems on the same questions.

One place for the uncertainty of every evaluation score (`raft eval`'s F1, exact match, format rate and
quote validity; the per-question F1 deltas between two models). The resampling is SciPy's
`scipy.stats.bootstrap` (percentile method: Efron & Tibshirani 1993, ch. 13), seeded through a NumPy
`Generator`, so the same data and seed always give the same interval.

The percentile interval of a mean is the right tool for bounded per-question scores (F1 in [0, 1],
0/1 indicators) at the sizes evaluated here (tens to hundreds of questions); it needs at least two
observations, so fewer give no interval (None), never a made-up one. Constant data give a zero-width
interval at the constant.
"""

from __future__ import annotations

from typing import Any, Sequence

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
METHOD = "percentile"
TIE_TOLERANCE = 1e-9  # per-question deltas closer to 0 than this count as ties


def bootstrap_ci(values: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES,
                 confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> tuple[float, float] | None:
    """The percentile bootstrap confidence interval of the mean of `values`.

    :param values: one score per question (any real numbers; NaN is refused).
    :param resamples: bootstrap resamples (>= 1; 2,000 keeps the 2.5%/97.5% percentiles within about
        ±0.005 of their limit for scores in [0, 1]).
    :param confidence: two-sided level in (0, 1), e.g. 0.95.
    :param seed: seed of the resampling (numpy.random.default_rng).
    :returns: (low, high) of the mean, low <= mean <= high up to resampling noise; None for fewer than
        two values.
    :raises ValueError: resamples < 1, confidence outside (0, 1), or a NaN value.
    """
    import numpy as np
    from scipy import stats

    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    data = np.asarray(list(values), dtype=float)
    if np.isnan(data).any():
        raise ValueError("values contain NaN: score every question before bootstrapping")
    if data.size < 2:
        return None
    if np.all(data == data[0]):  # every resample has the same mean: scipy agrees, without the arithmetic
        return float(data[0]), float(data[0])
    result = stats.bootstrap((data,), np.mean, n_resamples=resamples, confidence_level=confidence,
                             method=METHOD, vectorized=True, rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def paired_comparison(model: Sequence[float], baseline: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES,
                      confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    """Compare two systems scored on the SAME questions, in the same order: per-question deltas model - baseline.

    Resampling the questions and averaging their deltas is the paired bootstrap (Koehn 2004; the same
    question's two scores always move together), so the interval of the mean delta is narrower than
    comparing the two separate intervals whenever the systems agree on which questions are hard.

    :param model: one score per question for the compared system.
    :param baseline: the baseline's score on the same questions (same length, same order).
    :returns: {"n", "mean_delta", "ci" ([low, high] or None below two questions), "wins", "ties",
        "losses"} where a win is a question the model scores higher on (|delta| <= 1e-9 is a tie);
        mean_delta is None when there is no question.
    :raises ValueError: the two sequences differ in length (or what bootstrap_ci raises).
    """
    a, b = list(model), list(baseline)
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same questions: {len(a)} model scores against {len(b)} baseline")
    deltas = [x - y for x, y in zip(a, b)]
    ci = bootstrap_ci(deltas, resamples=resamples, confidence=confidence, seed=seed)
    return {"n": len(deltas), "mean_delta": sum(deltas) / len(deltas) if deltas else None,
            "ci": list(ci) if ci is not None else None,
            "wins": sum(d > TIE_TOLERANCE for d in deltas), "ties": sum(abs(d) <= TIE_TOLERANCE for d in deltas),
            "losses": sum(d < -TIE_TOLERANCE for d in deltas)}


__all__ = ["DEFAULT_RESAMPLES", "DEFAULT_CONFIDENCE", "METHOD", "bootstrap_ci", "paired_comparison"]
