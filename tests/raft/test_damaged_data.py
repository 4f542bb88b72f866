"""Issue 11, reproduced through the `raft` command: a damaged line is never a reason to lose or silently skip
the good lines after it. `raft generate` on the same folder keeps every valid record, moves the damaged line
to dataset.jsonl.damaged and says so; `raft export`, `raft eval` and `raft train` refuse a damaged file with
one line naming the file and line (exit 1, no traceback); so does a bad --split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from raft.cli import cli
from raft.records import DATASET, STATS, read_jsonl
from tests.raft.test_records import good

URL = "http://127.0.0.1:9/v1"  # an HTTP teacher is only contacted when a chunk is left to do


MORE_NOTES = {
    "quantization.txt": "Quantization stores the weights of a network in fewer bits, such as "
                       "eight or four bits per weight, which saves memory and speeds up inference on small devices.\n",
    "rlhf.txt": "Reinforcement learning from human feedback trains a reward model on human preference "
               "rankings and then tunes the language model to produce answers that the reward model scores highly.\n",
    "prompting.txt": "Few-shot prompting places several worked examples of the task inside the prompt "
                    "so that the model can imitate their format without any change to its weights.\n",
}


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_generate_rerun_keeps_every_valid_line_after_a_damaged_one(small_corpus: Path, tmp_path: Path) -> None:
    from raft.synth.run import RaftConfig, run
    from rag.config import load_settings
    from tests.raft.synth.test_synth import ScriptedTeacher

    for name, text in MORE_NOTES.items():
        (small_corpus / name).write_text(text, encoding="utf-8")
    index, out = tmp_path / "index", tmp_path / "raft"
    settings = load_settings(index_dir=index, model=URL)
    config = RaftConfig(corpus=str(small_corpus), questions=2, distractors=2, seed=3, progress=False)
    first = run(small_corpus, out, settings, config, generator=ScriptedTeacher())
    lines = _lines(out / DATASET)
    assert first["samples"] == len(lines) >= 4
    damaged = lines[2][: len(lines[2]) // 2] + b"\xff garbage"
    (out / DATASET).write_bytes(b"\n".join(lines[:2] + [damaged] + lines[3:]) + b"\n")

    args = ["generate", str(small_corpus), "--out", str(out), "--index-dir", str(index), "--model", URL,
            "--questions", "2", "--distractors", "2", "--seed", "3", "--no-index", "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert _lines(out / DATASET) == lines[:2] + lines[3:]  # every valid line, in order
    assert (out / (DATASET + ".damaged")).read_bytes() == damaged + b"\n"
    assert f"moved damaged line 3 (not a JSON object (not UTF-8" in r.stderr
    assert f"to {out / DATASET}.damaged; kept the {len(lines) - 1} valid lines" in r.stderr
    stats = json.loads(r.stdout)
    assert stats == json.loads((out / STATS).read_text())
    assert stats["samples"] == len(lines) - 1 and stats["this_run"]["damaged_lines_moved"] == {DATASET: 1}
    assert stats["this_run"]["dropped_unfinished"] == 0

    again = CliRunner().invoke(cli, args)  # nothing left to repair
    assert again.exit_code == 0, again.output
    assert "damaged" not in again.stderr and json.loads(again.stdout)["this_run"]["damaged_lines_moved"] == {}
    assert _lines(out / DATASET) == lines[:2] + lines[3:]
    exported = CliRunner().invoke(cli, ["export", str(out), "--split", "1"])
    assert exported.exit_code == 0 and f"train: {len(lines) - 1} rows" in exported.output


def _dataset(folder: Path, bad: bytes | None = None, at: int = 5, n: int = 21) -> Path:
    """A 21-record dataset folder; `bad` replaces line `at + 1` (line 6 of 21, as in the issue)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(good(i)).encode() for i in range(1, n + 1)]
    if bad is not None:
        lines[at] = bad
    (folder / DATASET).write_bytes(b"\n".join(lines) + b"\n")
    return folder


def _commands(data: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "export": ["export", str(data), "--out", str(tmp_path / "export")],
        "eval": ["eval", str(data), "--report", str(tmp_path / "report"), "--models", "bundled"],
        "train": ["train", str(data), "--out", str(tmp_path / "model")],
    }


BAD_LINES = {
    "not an object": (b"[1, 2, 3]", "not a JSON object (an array)"),
    "broken JSON": (json.dumps(good(6)).encode()[:40], "not a JSON object (Unterminated string"),
    "no source_chunk_id": (json.dumps({k: v for k, v in good(6).items() if k != "source_chunk_id"}).encode(),
                           "not a RAFT record: missing field source_chunk_id"),
    "list chunk id": (json.dumps(good(6, source_chunk_id=[6])).encode(),
                      "field source_chunk_id must be an integer, got a list ([6])"),
    "list id": (json.dumps(good(6, id=["raft-6"])).encode(), "field id must be a non-empty string, got a list"),
    "null cot_answer": (json.dumps(good(6, cot_answer=None)).encode(), "field cot_answer must be a string, got null"),
    "not UTF-8": (json.dumps(good(6)).encode().replace(b"LoRA", b"Lo\xffRA", 1),
                  "not a JSON object (not UTF-8: byte 0xff"),
}


@pytest.mark.parametrize("command", ["export", "eval", "train"])
@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_readers_refuse_a_damaged_line_in_one_line(tmp_path: Path, command: str, kind: str) -> None:
    bad, reason = BAD_LINES[kind]
    data = _dataset(tmp_path / "data", bad)
    r = CliRunner().invoke(cli, _commands(data, tmp_path)[command])
    assert r.exit_code == 1, r.output
    assert r.output.startswith(f"Error: {data / DATASET} line 6: {reason}"), r.output
    assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert not (tmp_path / "export").exists() and not (tmp_path / "model").exists()


@pytest.mark.parametrize("command", ["export", "eval", "train"])
def test_one_duplicate_id_rule_for_every_reader(tmp_path: Path, command: str) -> None:
    data = _dataset(tmp_path / "data", json.dumps(good(6, id="raft-2")).encode())
    r = CliRunner().invoke(cli, _commands(data, tmp_path)[command])
    assert r.exit_code == 1, r.output
    assert r.output == f"Error: {data / DATASET} line 6: duplicate id 'raft-2' (also on line 2): each record " \
                       "needs its own id; delete one of them or regenerate the dataset\n"


@pytest.mark.parametrize("command", ["export", "eval", "train"])
@pytest.mark.parametrize("split", ["nan", "0.8,nan,0.2", "inf,0,0", "1.5,-0.5"])
def test_a_bad_split_is_a_one_line_error(tmp_path: Path, command: str, split: str) -> None:
    data = _dataset(tmp_path / "data")
    r = CliRunner().invoke(cli, _commands(data, tmp_path)[command] + ["--split", split])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("Error: --split needs 1 to 3 non-negative fractions") and r.output.count("\n") == 1


def test_a_torn_last_line_is_still_dropped_silently(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    with open(data / DATASET, "ab") as f:
        f.write(json.dumps(good(22)).encode()[:50])  # a crash in the middle of an append
    r = CliRunner().invoke(cli, ["export", str(data), "--split", "1", "--out", str(tmp_path / "export")])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("train: 21 rows") and len(read_jsonl(tmp_path / "export" / "train.jsonl")) == 21
