"""The `raft eval` summary built on bootstrap intervals (raft.eval_report): means with intervals, the paired
comparison of the same questions, the tables and the chart (the bootstrap itself: tests/rag/evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raft.eval_report import compare, format_markdown, summarize, write_chart
from rag.errors import RagError

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
