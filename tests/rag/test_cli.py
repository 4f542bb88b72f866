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


@pytest.mark.slow  # two subprocesses that each load torch and the embedder
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


# ---- issue 11: one-line errors (exit 1), never a traceback ------------------------------------------------


def _one_line_error(r, *needles: str) -> str:
    """The result is exit 1 with a single `Error: ...` line holding every needle, and no traceback."""
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    errors = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, r.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def test_index_of_a_symlink_loop_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    r = CliRunner().invoke(cli, ["index", str(loop), "--index-dir", str(tmp_path / "idx")])
    _one_line_error(r, "symlink loop", str(loop))


def test_index_dir_env_pointing_at_a_file_is_one_line(tmp_path, small_corpus):
    afile = tmp_path / "notes.txt"
    afile.write_text("I am a file")
    env = {"RAG_INDEX_DIR": str(afile)}
    for args in (["index", str(small_corpus)], ["search", "LoRA"], ["search", "--queries-file", str(afile)]):
        r = CliRunner().invoke(cli, args, env=env)
        _one_line_error(r, "RAG_INDEX_DIR", str(afile), "is a file, not a folder")


def test_index_dir_env_pointing_at_a_file_real_process(tmp_path):
    """The installed `rag` in a subprocess: stderr is one line, no traceback."""
    afile = tmp_path / "notes.txt"
    afile.write_text("I am a file")
    env = {**os.environ, "RAG_INDEX_DIR": str(afile)}
    p = subprocess.run([str(Path(sys.executable).parent / "rag"), "search", "LoRA"], env=env, check=False,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and p.stderr.startswith("Error: "), p.stderr


@pytest.fixture
def built_index(run, small_corpus, tmp_path) -> str:
    idx = str(tmp_path / "idx")
    assert run("index", str(small_corpus), "--index-dir", idx).exit_code == 0
    return idx


def test_queries_file_with_invalid_utf8_is_one_line(built_index, tmp_path):
    bad = tmp_path / "q.txt"
    bad.write_bytes(b"What does LoRA freeze?\ncaf\xe9\n")
    r = CliRunner().invoke(cli, ["search", "--queries-file", str(bad), "--index-dir", built_index])
    _one_line_error(r, "queries file", str(bad), "not valid UTF-8 (byte 26)")
    assert "hits" not in r.output  # refused before any query ran
    r = CliRunner().invoke(cli, ["search", "--queries-file", "-", "--index-dir", built_index],
                           input=b"What does LoRA freeze?\ncaf\xe9\n")
    _one_line_error(r, "stdin", "line 2", "not valid UTF-8")
    assert r.output.count('"hits"') == 1  # the first line was answered as it arrived


def test_queries_file_in_utf16_with_bom_is_read(run, built_index, tmp_path):
    q = tmp_path / "q16.txt"
    q.write_bytes(b"\xff\xfe" + "What does LoRA freeze?\r\nWhat is top-p?\r\n".encode("utf-16-le"))
    r = run("search", "--queries-file", str(q), "-k", "1", "--index-dir", built_index)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.output.strip().splitlines()]
    assert [x["query"] for x in lines] == ["What does LoRA freeze?", "What is top-p?"]
    assert lines[1]["hits"][0]["source"] == "sampling.txt"


def test_question_file_with_invalid_utf8_is_one_line(built_index, tmp_path):
    bad = tmp_path / "questions.jsonl"
    bad.write_bytes(b'{"question": "caf\xe9?", "evidence": ["x"]}\n')
    for cmd in (["eval-retrieval", str(bad)], ["eval", str(bad), "--report", str(tmp_path / "rep")]):
        r = CliRunner().invoke(cli, [*cmd, "--index-dir", built_index])
        _one_line_error(r, "question file", str(bad), "not valid UTF-8")


@pytest.mark.parametrize("damage,needle", [
    (lambda m: [], "manifest.json holds a JSON list"),
    (lambda m: {k: v for k, v in m.items() if k != "counts"}, "manifest.json field 'counts'"),
])
def test_damaged_manifest_is_one_line(built_index, damage, needle):
    from rag.index.store import current_generation

    path = current_generation(Path(built_index)) / "manifest.json"
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    for args in (["search", "LoRA"], ["index", str(Path(built_index).parent / "corpus")]):
        r = CliRunner().invoke(cli, [*args, "--index-dir", built_index])
        _one_line_error(r, needle, "rag index --rebuild")


def test_index_lists_unsupported_files_and_refuses_zero_documents(run, small_corpus, tmp_path):
    (small_corpus / "notes.doc").write_bytes(b"\xd0\xcf\x11\xe0 word")
    r = CliRunner().invoke(cli, ["index", str(small_corpus), "--index-dir", str(tmp_path / "idx")])
    assert r.exit_code == 0 and "skipped notes.doc: unsupported file type .doc;" in r.output
    assert "3 added" in r.output and "1 skipped" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(cli, ["index", str(empty), "--index-dir", str(tmp_path / "idx2")])
    _one_line_error(r, "no documents to index", str(empty))
    only_doc = tmp_path / "doc"
    only_doc.mkdir()
    (only_doc / "notes.doc").write_bytes(b"\xd0\xcf\x11\xe0 word")
    r = CliRunner().invoke(cli, ["index", str(only_doc), "--index-dir", str(tmp_path / "idx3")])
    _one_line_error(r, "no documents to index", "notes.doc")
    assert "skipped notes.doc: unsupported file type .doc;" in r.output


@pytest.mark.parametrize("content,needle", [
    (b"topk = 3\n", "unknown setting 'topk'"),
    (b"top_k = \n", "not valid TOML"),
    (b"top_k = 0\n", "invalid setting top_k (from config file"),
    (None, "not found"),
])
def test_config_file_problems_are_one_line(tmp_path, content, needle):
    cfg = tmp_path / "rag.toml"
    if content is not None:
        cfg.write_bytes(content)
    r = CliRunner().invoke(cli, ["search", "LoRA", "--index-dir", str(tmp_path / "none")], env={"RAG_CONFIG": str(cfg)})
    _one_line_error(r, needle, str(cfg))


def test_config_file_in_utf16_with_bom_is_read(tmp_path, monkeypatch):
    from rag.config import load_settings

    cfg = tmp_path / "rag.toml"
    cfg.write_bytes(b"\xff\xfe" + "top_k = 7\r\n".encode("utf-16-le"))
    monkeypatch.setenv("RAG_CONFIG", str(cfg))
    assert load_settings().top_k == 7


# ---- issue 31: a link out of the course is skipped unless asked for; a loader error is a skip line ---------


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="needs /etc/passwd, the file of the issue's example")
def test_a_link_to_the_password_file_is_not_indexed_unless_asked(small_corpus, tmp_path):
    """`ln -s /etc/passwd corpus/week4-notes.txt; rag index corpus` served the password file to `rag search`."""
    idx = str(tmp_path / "idx")
    (small_corpus / "week4-notes.txt").symlink_to("/etc/passwd")
    r = CliRunner().invoke(cli, ["index", str(small_corpus), "--index-dir", idx])
    assert r.exit_code == 0, r.output
    assert ("skipped week4-notes.txt: links outside the course folder (to /etc/passwd), not read; to index it, "
            "pass --follow-outside-links or set RAG_FOLLOW_OUTSIDE_LINKS=true") in r.output.splitlines()
    r = CliRunner().invoke(cli, ["search", "root bin bash", "--mode", "bm25", "--json", "--index-dir", idx])
    assert "week4-notes.txt" not in {hit["source"] for hit in json.loads(r.output)}
    r = CliRunner().invoke(cli, ["index", str(small_corpus), "--index-dir", idx, "--follow-outside-links"])
    assert r.exit_code == 0 and "1 added" in r.output, r.output
    r = CliRunner().invoke(cli, ["index", str(small_corpus), "--index-dir", idx], env={"RAG_FOLLOW_OUTSIDE_LINKS": "1"})
    assert r.exit_code == 0 and "up to date" in r.output, r.output  # the setting: same as the flag


def test_a_pdf_bomb_is_a_skip_line_and_the_good_files_are_indexed(small_corpus, tmp_path):
    from tests.pdfgen import make_flate_bomb_pdf

    (small_corpus / "bomb.pdf").write_bytes(make_flate_bomb_pdf())
    (small_corpus / "page.html").write_text("<p>Visible text.</p><p hidden>Answer key</p>", encoding="utf-8")
    r = CliRunner().invoke(cli, ["index", str(small_corpus), "--index-dir", str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "indexed 4 files" in r.output and "1 skipped" in r.output
    assert any(line.startswith("skipped bomb.pdf: PDF too costly to read") for line in r.output.splitlines())
    assert "note page.html: dropped text no reader sees: 10 characters of hidden HTML" in r.output.splitlines()
