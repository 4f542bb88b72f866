"""The whole RAFT comparison, tiny and real: train a RAFT and a DSF adapter on the bundled SmolLM2-135M (a few
optimizer steps on a hand-written dataset), index a tiny course, then `raft eval` the base, RAFT and DSF models
with the oracle and with the product's own retrieved passages: intervals, the paired comparison, the chart
and what each run folder records about its session."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from raft.splits import parse_split, split_by_chunk
from raft.train.config import REPORT, TrainConfig
from raft.train.loop import train
from rag.errors import RagError
from tests.raft.train.test_train import FACTS, TINY, make_record, write_dataset

SPLIT = "0.5,0,0.5"  # 3 chunks to train on, 3 held-out questions


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


def _check_session(run: dict, command: str | None = None) -> None:
    assert run["seed"] == 0 and run["duration_s"] >= 0 and run["peak_rss_mb"] > 100  # a model was loaded
    assert datetime.fromisoformat(run["started_at"]) <= datetime.fromisoformat(run["finished_at"])
    if command is not None:
        assert run["command"] == command


@pytest.mark.llm
def test_train_raft_and_dsf_then_compare_them_with_intervals(tmp_path: Path) -> None:
    from raft.cli import cli
    from rag.api import index_corpus
    from rag.config import Settings

    records = [make_record(i, f, FACTS[(i + 1) % len(FACTS)][1], i % 2 == 0) for i, f in enumerate(FACTS)]
    data = write_dataset(tmp_path / "data", records)
    config = {**TINY, "split": SPLIT}
    raft_out, dsf_out = tmp_path / "raft", tmp_path / "dsf"
    raft_report = train(data, raft_out, TrainConfig(**config), progress=False, command="raft train data --out raft")
    dsf_report = train(data, dsf_out, TrainConfig(**config, method="dsf"), progress=False)
    for report in (raft_report, dsf_report):
        assert report["steps"] == 3 and report["samples"] == 3
        assert json.loads((Path(report["out"]) / REPORT).read_text())["run"] == report["run"]
    _check_session(raft_report["run"], "raft train data --out raft")
    assert (raft_report["method"], dsf_report["method"]) == ("raft", "dsf")
    # DSF saw the same answers without the documents: shorter prompts, the same answer tokens
    assert dsf_report["tokens_per_sample"]["mean"] < raft_report["tokens_per_sample"]["mean"] - 20
    assert dsf_report["tokens_per_sample"]["answer_mean"] == raft_report["tokens_per_sample"]["answer_mean"]
    with pytest.raises(RagError, match="method: None before, 'dsf' now"):
        train(data, raft_out, TrainConfig(**config, method="dsf"), progress=False)
    # each merged model declares the conversation it was tuned on, so `rag ask/serve` and the app ask it that way
    from rag.generation.models import PROMPT_FORMAT_FILE, read_prompt_format
    for out, method in ((raft_out, "raft"), (dsf_out, "dsf")):
        declared = json.loads((out / "merged" / PROMPT_FORMAT_FILE).read_text())
        assert declared["prompt_format"] == "raft" and declared["method"] == method
        assert read_prompt_format(out / "merged") == "raft"

    course = tmp_path / "course"
    course.mkdir()
    (course / "notes.md").write_text("# Notes\n\n" + "".join(f"## {t}\n\n{text}\n\n" for t, text, _, _ in FACTS),
                                     encoding="utf-8")
    index_corpus(course, Settings(index_dir=tmp_path / "index", corpus_dir=course))

    report_dir = tmp_path / "report"
    args = ["eval", str(data), "--models", f"bundled,{raft_out},{dsf_out}", "--settings", "oracle,retrieved",
            "--index-dir", str(tmp_path / "index"), "-k", "2", "--split", SPLIT, "--max-new-tokens", "8",
            "--resamples", "200", "--report", str(report_dir)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "| retrieved top-k | `bundled` | 3 |" in r.stdout and "Paired comparison with `bundled`" in r.stdout
    print(r.stdout)

    summary = json.loads((report_dir / "summary.json").read_text())
    test_ids = {x["id"] for x in split_by_chunk(records, parse_split(SPLIT), 0)["test"]}
    assert summary["questions"] == 3 and summary["retrieval"]["k"] == 2
    assert summary["bootstrap"]["resamples"] == 200 and summary["bootstrap"]["method"] == "percentile"
    _check_session(summary["run"])
    for model in summary["models"]:
        for setting in ("oracle", "retrieved"):
            cell = summary["results"][model][setting]
            assert cell["n"] == 3
            for key in ("f1", "em", "format"):
                low, high = cell[f"{key}_ci"]
                assert 0.0 <= low <= cell[key] + 1e-9 and cell[key] <= high + 1e-9 and high <= 1.0
        assert summary["results"][model]["oracle"]["oracle_shown"] == 1.0
    comparison = summary["comparison"]
    assert comparison["baseline"] == "bundled" and set(comparison["pairs"]) == {str(raft_out), str(dsf_out)}
    for per in comparison["pairs"].values():
        for p in per.values():
            assert p["n"] == 3 and p["wins"] + p["ties"] + p["losses"] == 3 and len(p["ci"]) == 2

    rows = [json.loads(line) for line in (report_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 * 3 and {x["id"] for x in rows} == test_ids
    retrieved = [x for x in rows if x["setting"] == "retrieved"]
    assert all(1 <= x["n_docs"] <= 2 for x in retrieved)
    by_question = {}
    for x in retrieved:  # every model was shown the same passages for a question
        by_question.setdefault(x["id"], set()).add((x["n_docs"], x["oracle_position"]))
    assert all(len(v) == 1 for v in by_question.values())
    shown = sum(x["oracle_position"] >= 0 for x in retrieved) / len(retrieved)
    assert summary["results"]["bundled"]["retrieved"]["oracle_shown"] == pytest.approx(shown) and shown > 0
    assert (report_dir / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the baseline only reshapes the summary: no answer is made again
    before = (report_dir / "results.jsonl").read_bytes()
    again = CliRunner().invoke(cli, args + ["--baseline", str(raft_out), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["comparison"]["baseline"] == str(raft_out)
    assert (report_dir / "results.jsonl").read_bytes() == before
    bad = CliRunner().invoke(cli, args + ["--baseline", "nope"])
    assert bad.exit_code == 1 and "--baseline nope is not one of the evaluated --models" in bad.output
    at = args.index("-k") + 1
    other_k = CliRunner().invoke(cli, [*args[:at], "1", *args[at + 1:]])  # -k 1: other passages
    assert other_k.exit_code == 1 and "the retrieved passages changed" in other_k.output and "k: 2 before" in other_k.output
    assert (report_dir / "results.jsonl").read_bytes() == before
