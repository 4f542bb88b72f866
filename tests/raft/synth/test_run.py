"""`raft generate` against a teacher that misbehaves (issue 31), a real HTTP server on 127.0.0.1 (the suite's
fake OpenAI server): a teacher that accepts and never answers costs the deadline (a setting), not 3 x 120 s;
one that ignores max_tokens and never ends is cut at the byte cap (a setting); a reply with bytes that are
not UTF-8 is a rejected sample with its reason, streamed or not (no U+FFFD in the dataset, no traceback);
and a run that produced nothing exits 1 with a one-line reason."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from raft.cli import cli
from raft.records import DATASET, REJECTED, STATS, read_jsonl
from tests.fake_openai import FakeServer, sse

QUESTIONS = sse("Here are the questions:\n1. What does the model learn during fine-tuning here?")


@pytest.fixture
def teacher(fake_openai: FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeServer:
    monkeypatch.delenv("RAG_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "empty.toml"))
    return fake_openai


def generate(corpus: Path, out: Path, teacher: FakeServer, **env: str):
    args = ["generate", str(corpus), "--out", str(out), "--index-dir", str(out.parent / "index"), "--model",
            teacher.url, "--questions", "1", "--distractors", "1", "--limit", "1", "--json"]
    return CliRunner().invoke(cli, args, env=env)


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    last = result.stderr.strip().splitlines()[-1]  # after the progress bar's lines
    assert last.startswith("Error: ") and result.stderr.count("Error") == 1, result.stderr
    return last


def test_a_teacher_that_never_answers_costs_the_deadline(small_corpus: Path, tmp_path: Path, teacher: FakeServer):
    teacher.play(("hang",))
    started = time.monotonic()
    r = generate(small_corpus, tmp_path / "raft", teacher, RAG_MODEL_TIMEOUT="60", RAG_MODEL_DEADLINE="1.5")
    took = time.monotonic() - started
    message = one_line_error(r)
    assert "no sample was made: the teacher failed on all 1 chunk(s)" in message
    assert "deadline of 1.5 s" in message and "model_deadline" in message
    assert took < 40, took  # indexing the small corpus plus 1.5 s, not 3 x 60 s
    stats = json.loads((tmp_path / "raft" / STATS).read_text())
    assert stats["samples"] == 0 and len(stats["this_run"]["failed_chunks"]) == 1


def test_a_teacher_that_never_stops_is_cut_at_the_byte_cap(small_corpus: Path, tmp_path: Path, teacher: FakeServer):
    teacher.play(("endless", "on and on ", 0))
    r = generate(small_corpus, tmp_path / "raft", teacher, RAG_MODEL_MAX_REPLY_BYTES="4096")
    message = one_line_error(r)
    assert "no sample was kept from 1 chunk(s)" in message and "question_reply_too_long 1" in message
    (row,) = read_jsonl(tmp_path / "raft" / REJECTED)
    assert row["reason"] == "reply_too_long" and "4096 bytes" in row["raw"]


@pytest.mark.parametrize("streamed", [True, False])
def test_a_reply_that_is_not_utf8_is_a_rejected_sample(small_corpus: Path, tmp_path: Path, teacher: FakeServer,
                                                       streamed: bool):
    answer = "##Reason: ##begin_quote##caf@##end_quote##\n<ANSWER>: caf@"
    if streamed:
        bad = ("reply", 200, "text/event-stream", sse(answer).replace(b"@", b"\xe9"))
    else:
        body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})
        bad = ("reply", 200, "application/json", body.encode().replace(b"@", b"\xe9"))
    teacher.play(("reply", 200, "text/event-stream", QUESTIONS), bad)
    r = generate(small_corpus, tmp_path / "raft", teacher)
    message = one_line_error(r)
    assert "no sample was kept" in message and "answer_reply_not_utf8 1" in message
    out = tmp_path / "raft"
    assert not (out / DATASET).exists() or not read_jsonl(out / DATASET)
    (row,) = read_jsonl(out / REJECTED)
    assert row["stage"] == "answer" and row["reason"] == "reply_not_utf8" and "not UTF-8" in row["raw"]
    assert "\ufffd" not in (out / REJECTED).read_text(encoding="utf-8")
    assert json.loads((out / STATS).read_text())["rejections"]["answer_reply_not_utf8"] == 1


def test_what_the_index_left_out_is_said_and_links_out_need_the_opt_in(small_corpus: Path, tmp_path: Path,
                                                                        teacher: FakeServer):
    outside = tmp_path / "outside.txt"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    (small_corpus / "week4-notes.txt").symlink_to(outside)
    teacher.play(("hang",))
    r = generate(small_corpus, tmp_path / "raft", teacher, RAG_MODEL_DEADLINE="0.5")
    assert "raft: skipped week4-notes.txt: links outside the course folder" in r.stderr, r.stderr
    assert "--follow-outside-links" in r.stderr
    args = ["generate", str(small_corpus), "--out", str(tmp_path / "raft2"), "--index-dir", str(tmp_path / "index2"),
            "--model", teacher.url, "--limit", "1", "--follow-outside-links", "--json"]
    teacher.play(("hang",))
    r2 = CliRunner().invoke(cli, args, env={"RAG_MODEL_DEADLINE": "0.5"})
    assert "week4-notes.txt" not in r2.stderr, r2.stderr
