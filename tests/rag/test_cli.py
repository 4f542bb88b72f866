"""The `rag` command as a user runs it: index, search (text, --json, --queries-file), eval-retrieval, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import cli
from tests.conftest import ROOT


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()

    def _run(*args: str, input: str | None = None):
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return _run


def test_index_twice_then_search_json(run, small_corpus, tmp_path):
    idx = str(tmp_path / "idx")
    r = run("index", str(small_corpus), "--index-dir", idx)
    assert r.exit_code == 0, r.output
    assert "indexed 3 files" in r.output and "3 added" in r.output
    r = run("index", str(small_corpus), "--index-dir", idx)
    assert r.exit_code == 0 and "up to date" in r.output and "nothing changed" in r.output
    r = run("search", "What does LoRA freeze?", "-k", "2", "--json", "--index-dir", idx)
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert len(hits) == 2
    assert set(hits[0]) >= {"chunk_id", "text", "score", "rank", "source", "section"}
    assert hits[0]["source"] == "fine-tuning.md" and "LoRA" in hits[0]["text"]
    r = run("search", "self attention", "--mode", "dense", "--index-dir", idx)
    assert r.exit_code == 0 and "week2/attention.md" in r.output


def test_queries_file_prints_one_json_line_per_query(run, small_corpus, tmp_path):
    idx = str(tmp_path / "idx")
    assert run("index", str(small_corpus), "--index-dir", idx).exit_code == 0
    qfile = tmp_path / "q.txt"
    qfile.write_text("What does LoRA freeze?\n\nWhat is top-p?\n", encoding="utf-8")
    r = run("search", "--queries-file", str(qfile), "-k", "1", "--index-dir", idx)
    lines = [json.loads(x) for x in r.output.strip().splitlines()]
    assert [x["query"] for x in lines] == ["What does LoRA freeze?", "What is top-p?"]
    assert lines[0]["hits"][0]["source"] == "fine-tuning.md"
    assert lines[1]["hits"][0]["source"] == "sampling.txt"


def test_user_errors_exit_1_usage_errors_exit_2(run, tmp_path, small_corpus):
    r = CliRunner().invoke(cli, ["search", "anything", "--index-dir", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no index at" in r.output and "rag index" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["index", str(tmp_path / "missing"), "--index-dir", str(tmp_path / "i")])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = CliRunner().invoke(cli, ["search", "x", "--mode", "fuzzy"])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["search"])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["search", "x", "-k", "0"])
    assert r.exit_code == 2


def test_index_reports_skipped_files(run, small_corpus, tmp_path):
    (small_corpus / "broken.pdf").write_bytes(b"%PDF-1.4 junk")
    r = CliRunner().invoke(cli, ["index", str(small_corpus), "--index-dir", str(tmp_path / "idx")])
    assert r.exit_code == 0
    assert "skipped broken.pdf: broken PDF" in r.output and "1 skipped" in r.output


def test_eval_retrieval_on_the_dev_set(course_index):
    r = CliRunner().invoke(cli, ["eval-retrieval", str(ROOT / "eval" / "dev_questions.jsonl"),
                                 "--index-dir", str(course_index.index_dir), "--json"])
    assert r.exit_code == 0, r.output
    scores = json.loads(r.output)
    assert set(scores) == {"dense", "bm25", "hybrid"}
    for s in scores.values():
        assert s["n"] >= 20 and 0 <= s["recall@1"] <= s["recall@5"] <= s["recall@10"] <= 1
    assert max(s["recall@10"] for s in scores.values()) >= 0.5


def test_installed_console_script_and_env_index_dir(small_corpus, tmp_path):
    """The real `rag` entry point in a subprocess, index dir from RAG_INDEX_DIR."""
    env = {**os.environ, "RAG_INDEX_DIR": str(tmp_path / "envidx")}
    exe = Path(sys.executable).parent / "rag"
    p = subprocess.run([str(exe), "index", str(small_corpus)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([str(exe), "search", "LoRA", "--json", "-k", "1"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["source"] == "fine-tuning.md"
