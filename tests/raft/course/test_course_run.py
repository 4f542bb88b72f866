"""`raft course` end to end on a tiny course with tiny settings: the plan up front (time from a timed probe, disk),
generate, train, evaluate base vs tuned with intervals, install; then `model = auto` answers with the adapter on
that course (by content, on any index of it) and only there. Run again, nothing is redone; killed in the middle
of training (a real SIGKILL of the command), the same command finishes from the checkpoint without redoing the
finished stages or asking the teacher again.

Real parts: the bundled embedder, FAISS, SmolLM2-135M (trained with peft, answering with the transformers
decoder), the real HTTP client against the suite's fake OpenAI server on 127.0.0.1 (tests/fake_openai.py)
answering as test_synth.py's ScriptedTeacher: no teacher model that writes valid RAFT samples in seconds runs
here. The model cache is a temporary folder holding a link to the converted bundled model, so the merged
models this writes go away with the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from raft.course.state import STATE
from raft.records import DATASET
from tests.conftest import ROOT, write_small_corpus
from tests.fake_openai import FakeServer, answering
from tests.raft.synth.test_synth import teacher_reply
from tests.raft.train.test_train import FACTS

pytestmark = pytest.mark.llm
MORE = " It is one of the central ideas of this course and it comes back in several later lessons."
STAGES = ["plan", "generate", "train", "evaluate", "quiz", "install"]


def tiny_args(corpus: Path, out: Path, teacher: FakeServer, *extra: str) -> list[str]:
    """3 train and 3 held-out samples, one question and one distractor each, LoRA r 4, 8 answer tokens."""
    return ["course", str(corpus), "--out", str(out), "--teacher", teacher.url, "--questions", "1",
            "--distractors", "1", "--split", "0.5,0,0.5", "--max-length", "256", "--lora-r", "4", "--grad-accum", "1",
            "--max-val-samples", "0", "--save-steps", "1", "--threads", "1", "--eval-settings", "oracle,retrieved",
            "-k", "2", "--eval-max-new-tokens", "8", "--resamples", "200", *extra]


def write_course(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for topic, text, _, _ in FACTS:
        (folder / f"{topic.lower()}.md").write_text(f"# {topic}\n\n{text}{MORE}\n", encoding="utf-8")
    return folder


def state(out: Path) -> dict:
    return json.loads((out / STATE).read_text(encoding="utf-8"))["stages"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A model cache of its own (linking the converted bundled model), the transformers decoder, an empty
    registry of course adapters, no rag.toml, and the teacher server."""
    from rag.generation.spec import resolve_model

    bundled = resolve_model("bundled").local_dir()  # the shared cache's conversion (made once if missing)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / bundled.name).symlink_to(bundled, target_is_directory=True)
    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    for name, value in (("RAG_CACHE_DIR", cache), ("RAG_DECODER", "transformers"), ("RAG_CONFIG", tmp_path / "empty.toml"),
                        ("RAG_COURSE_ADAPTERS_DIR", tmp_path / "registry"), ("OMP_NUM_THREADS", "1")):
        monkeypatch.setenv(name, str(value))
    for name in ("RAG_MODEL", "RAG_INDEX_DIR", "RAG_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    server = answering(teacher_reply)
    yield {"teacher": server, "registry": tmp_path / "registry", "corpus": write_course(tmp_path / "course")}
    server.close()
    for path in cache.iterdir():  # the merged models (hundreds of MB); the link only, not the shared model
        path.unlink() if path.is_symlink() else shutil.rmtree(path, ignore_errors=True)


def test_one_command_plans_generates_trains_evaluates_and_installs(env, tmp_path: Path) -> None:
    from raft.cli import cli
    from rag.api import effective_model, index_corpus
    from rag.config import load_settings
    from rag.generation.course_registry import course_fingerprint, load_registry

    teacher, corpus, out = env["teacher"], env["corpus"], tmp_path / "out"
    args = tiny_args(corpus, out, teacher, "--install", "always")

    # the plan alone: time and disk up front, from a timed probe
    r = CliRunner().invoke(cli, [*args, "--plan"])
    assert r.exit_code == 0, r.output
    plan_text = r.stderr
    assert "course " in plan_text and "6 files, 6 chunks for the teacher" in plan_text
    assert "time: ~" in plan_text and "from a timed probe of this run" in plan_text and "disk: ~" in plan_text
    assert "stopped after the plan" in r.stdout and list(state(out)) == ["plan"] and not (out / "data").exists()
    probed = teacher.served
    assert probed > 0  # the probe asked the teacher about one chunk

    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    print(r.stderr, r.stdout)
    stages = state(out)
    assert list(stages) == STAGES and all(s["status"] == "done" and s["sessions"] == 1 for s in stages.values())
    assert stages["generate"]["result"]["samples"] == 6 and stages["train"]["result"]["steps"] == 3
    assert "raft course 100%" in r.stderr  # the one progress view, to the end

    # evaluated base vs tuned on the held-out split, with intervals
    brief = stages["evaluate"]["result"]["brief"]
    assert brief["questions"] == 3 and brief["primary"] == "retrieved" and set(brief["settings"]) == {"oracle",
                                                                                                   "retrieved"}
    for cell in brief["settings"].values():
        assert cell["wins"] + cell["ties"] + cell["losses"] == 3
        low, high = cell["delta_ci"]
        assert low <= cell["delta"] <= high
    assert "| retrieved (decides) |" in r.stdout and "installed (--install always)" in r.stdout

    # installed for this course, by content
    (entry,) = load_registry(env["registry"])
    files = stages["plan"]["result"]["course_files"]
    assert entry.id == course_fingerprint(files) and entry.course_files == files
    assert entry.source == str(corpus.resolve()) and entry.evaluation["primary"] == "retrieved"
    installed = entry.folder(env["registry"])
    for name in ("adapter_model.safetensors", "adapter_config.json", "rag_adapter.json"):
        assert (installed / name).read_bytes() == (out / "adapter" / name).read_bytes()
    assert stages["install"]["result"]["folder"] == str(installed) and str(installed) in r.stdout

    assert effective_model(load_settings(index_dir=out / "index")) == str(installed)
    copy = tmp_path / "copy"  # the same course elsewhere: the app's own index of it
    shutil.copytree(corpus, copy)
    app = load_settings(index_dir=tmp_path / "app-index")
    index_corpus(copy, app)
    assert effective_model(app) == str(installed)
    other = load_settings(index_dir=tmp_path / "other-index")
    index_corpus(write_small_corpus(tmp_path / "other"), other)
    assert effective_model(other) == "bundled"

    from rag.cli import cli as rag_cli

    asked = CliRunner().invoke(rag_cli, ["ask", "--json", "--index-dir", str(app.index_dir), "--max-new-tokens", "8",
                                         "What does LoRA train?"])
    assert asked.exit_code == 0, asked.output
    assert json.loads(asked.stdout)["model"].startswith(str(installed))  # `model = auto` answered with it

    # the same command again: every stage was done, nothing is redone, the teacher is not asked
    served, before = teacher.served, (out / "data" / DATASET).read_bytes()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert teacher.served == served and (out / "data" / DATASET).read_bytes() == before
    assert state(out) == stages and "generate, train and evaluate: done before" in again.stderr

    # a quiz people wrote, added to the finished run: asked of base and tuned, and it decides the install
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text("".join(json.dumps({"id": f"q{i}", "question": question, "options": [answer, "a banana soup"],
                                        "correct": [0]}) + "\n" for i, (_, _, question, answer) in enumerate(FACTS[:3])),
                    encoding="utf-8")
    quizzed = CliRunner().invoke(cli, [*args[:-2], "--install", "if-better", "--quiz", str(quiz)])
    assert quizzed.exit_code == 0, quizzed.output
    after = state(out)
    assert teacher.served == served and after["train"] == stages["train"] and after["evaluate"] == stages["evaluate"]
    q = after["quiz"]["result"]
    assert q["n"] == 3 and q["quiz_sha256"] and q["delta"]["wins"] + q["delta"]["ties"] + q["delta"]["losses"] == 3
    rows = [json.loads(line) for line in (out / "eval" / "quiz_rows.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["id"]) for r in rows) == sorted((m, f"q{i}") for m in ("base", "tuned") for i in range(3))
    assert "quiz " in quizzed.stdout and "(3 items, the product's choice; decides)" in quizzed.stdout
    assert "| retrieved |" in quizzed.stdout and "| retrieved (decides) |" not in quizzed.stdout
    decided = after["install"]["result"]
    assert decided["policy"] == "if-better" and decided["quiz_sha256"] == q["quiz_sha256"]
    assert "on the quiz (3 items" in decided["reason"]  # the quiz decided, not the held-out split
    won = q["delta"]["ci"] is not None and q["delta"]["ci"][0] > 0
    assert decided["installed"] is won
    assert won or "installed earlier for this course stays" in decided["reason"]
    again = CliRunner().invoke(cli, [*args[:-2], "--install", "if-better", "--quiz", str(quiz)])
    assert again.exit_code == 0 and state(out)["quiz"] == after["quiz"]  # asked once
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is LoRA?"}\n', encoding="utf-8")
    refused = CliRunner().invoke(cli, [*args, "--quiz", str(bad)])
    assert refused.exit_code == 1 and "has no \"options\"" in refused.stderr and state(out)["quiz"] == after["quiz"]

    # other arguments against the same run folder are refused, naming the difference
    other_lr = CliRunner().invoke(cli, [*args, "--lr", "0.1"])
    assert other_lr.exit_code == 1 and "lr: 0.001 before, 0.1 now" in other_lr.stderr

    gone = CliRunner().invoke(cli, ["course", str(corpus), "--uninstall"])
    assert gone.exit_code == 0 and "removed 1 adapter" in gone.stdout and load_registry(env["registry"]) == []
    assert effective_model(app) == "bundled"


@pytest.mark.slow
def test_killed_while_training_the_same_command_finishes_without_redoing_stages(env, tmp_path: Path) -> None:
    teacher, corpus, out = env["teacher"], env["corpus"], tmp_path / "out"
    command = [sys.executable, "-m", "raft.cli", *tiny_args(corpus, out, teacher, "--install", "always")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    try:
        first_checkpoint = out / "train" / "checkpoints" / "step-000001" / "state.json"
        deadline = time.monotonic() + 600
        while not first_checkpoint.exists():
            assert proc.poll() is None, f"raft course ended before it was killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "no training checkpoint in 600 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed = state(out)
    assert killed["generate"]["status"] == "done" and killed["train"]["status"] == "running"
    assert "install" not in killed
    served, dataset = teacher.served, (out / "data" / DATASET).read_bytes()

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    final = state(out)
    assert list(final) == STAGES and all(s["status"] == "done" for s in final.values())
    for stage in ("plan", "generate"):  # finished before the kill: not run again
        assert final[stage] == killed[stage] and final[stage]["sessions"] == 1
    assert teacher.served == served and (out / "data" / DATASET).read_bytes() == dataset
    assert final["train"]["sessions"] == 2 and final["train"]["result"]["resumed_from_step"] >= 1
    assert final["train"]["result"]["steps"] == 3
    assert final["install"]["result"]["installed"] and Path(final["install"]["result"]["folder"]).is_dir()
    assert "time left: ~" in done.stderr and "generate done" in done.stderr  # the resumed plan says what is left
