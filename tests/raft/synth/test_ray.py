"""`raft generate --engine ray` on a real local Ray cluster (127.0.0.1, 2 CPUs = two workers): the same
samples as the single-process run with the same seed, with the bundled model in the actors and with an
OpenAI-compatible teacher called concurrently; a driver killed mid-run resumes with no duplicate and no
loss; no Ray import without --engine ray.

The HTTP teacher is the suite's fake OpenAI server (tests/fake_openai.py), a real HTTP server on 127.0.0.1,
answering like the scripted teacher of test_synth.py (deterministic questions and quoting answers, streamed
as server-sent events): a real server for what a vLLM server would do, since no such model runs here."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raft.records import DATASET, PROGRESS, REJECTED, read_jsonl
from rag.config import Settings
from tests.conftest import CORPUS, ROOT
from tests.fake_openai import FakeServer, answering
from tests.raft.synth.test_synth import teacher_reply

from tests.raycluster import NO_RAY, cluster, needs_ray  # noqa: F401  (cluster: a fixture)


@pytest.fixture
def teacher():
    server = answering(teacher_reply, delay=0.05)
    yield server
    server.close()


def config(corpus: Path, **kw):
    from raft.synth.run import RaftConfig

    base = {"corpus": str(corpus), "questions": 2, "distractors": 2, "p": 0.8, "strategy": "hard", "seed": 3,
            "min_chunk_words": 5, "progress": False}
    return RaftConfig(**{**base, **kw})


def by_id(out: Path) -> list[dict]:
    return sorted(read_jsonl(out / DATASET), key=lambda r: r["id"])


def rows(out: Path, name: str) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(out / name))


@pytest.mark.llm
@pytest.mark.slow
@needs_ray
def test_bundled_model_on_ray_actors_gives_the_local_samples(cluster, small_corpus, tmp_path, one_torch_thread):
    """Same seed, same units (one chunk each), the bundled 135M model in each of two actors (one torch
    thread each, as the local run here): the same samples, rejections and per-chunk counts."""
    from raft.synth.ray_engine import RaftRayEngine
    from raft.synth.run import run

    local_settings = Settings(index_dir=tmp_path / "index-local", max_new_tokens=24)
    ray_settings = Settings(index_dir=tmp_path / "index-ray", max_new_tokens=24)  # indexed on Ray too
    cfg = {"questions": 1, "batch_size": 1}
    local = run(small_corpus, tmp_path / "local", local_settings, config(small_corpus, **cfg))
    engine = RaftRayEngine(cluster, workers=2)
    on_ray = run(small_corpus, tmp_path / "ray", ray_settings, config(small_corpus, **cfg), engine=engine)
    assert on_ray["this_run"]["engine"] == "ray" and local["this_run"]["engine"] == "local"
    assert on_ray["chunks_done"] == local["chunks_done"] == 3
    assert by_id(tmp_path / "ray") == by_id(tmp_path / "local")
    assert rows(tmp_path / "ray", PROGRESS) == rows(tmp_path / "local", PROGRESS)
    assert rows(tmp_path / "ray", REJECTED) == rows(tmp_path / "local", REJECTED)
    assert on_ray["generator_model"] == local["generator_model"] and on_ray["rejections"] == local["rejections"]
    assert on_ray["answers_attempted"] == local["answers_attempted"] > 0


def asked(out: Path) -> list[dict]:
    """The progress lines of chunks the teacher worked on."""
    if not (out / PROGRESS).exists():
        return []
    return [p for p in read_jsonl(out / PROGRESS) if p.get("questions") is not None]


def generate_cmd(out: Path, index: Path, teacher: FakeServer, *extra: str) -> list[str]:
    return [sys.executable, "-m", "raft.cli", "generate", str(CORPUS), "--out", str(out), "--index-dir", str(index),
            "--model", teacher.url, "--model-name", "scripted", "--questions", "2", "--distractors", "2",
            "--seed", "3", "--limit", "16", "--workers", "2", "--no-index", "--json", *extra]


@pytest.mark.slow
@needs_ray
def test_http_teacher_is_called_concurrently_and_a_killed_run_resumes(cluster, teacher, tmp_path, embedder):
    """The reference: the single-process run (2 threads). On Ray: 2 actors x 2 threads against the same
    server; the driver is SIGKILLed mid-run, and the same command then finishes the dataset: the samples,
    progress and rejections equal the reference, none twice, none lost."""
    from rag.api import index_corpus

    index = tmp_path / "index"
    index_corpus(CORPUS, Settings(index_dir=index))
    ref = tmp_path / "ref"
    proc = subprocess.run(generate_cmd(ref, index, teacher), capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = json.loads(proc.stdout)
    assert reference["this_run"]["engine"] == "local" and reference["samples"] > 0

    teacher.max_in_flight = 0
    teacher.delay = 0.3  # slow enough to stop it mid-run
    address = cluster.ray().get_runtime_context().gcs_address
    out = tmp_path / "ray"
    cmd = generate_cmd(out, index, teacher, "--engine", "ray", "--address", address, "--ray-workers", "2")
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while len(asked(out)) < 2:  # two chunks done by the teacher (too-short ones are done at the start)
            assert driver.poll() is None, driver.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the Ray run wrote no progress in 240 s"
            time.sleep(0.05)
        teacher.gate.clear()  # hold every further request: the run cannot finish before it is killed
        time.sleep(0.5)
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    done_at_kill = {r["chunk_id"] for r in read_jsonl(out / PROGRESS)}
    assert 2 <= len(asked(out)) < reference["chunks_with_questions_asked"]
    assert teacher.max_in_flight >= 3  # two actors, two request threads each
    teacher.gate.set()
    teacher.delay = 0.05

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout)
    assert stats["this_run"]["resumed"] and stats["this_run"]["engine"] == "ray"
    assert stats["this_run"]["chunks"] == reference["chunks_done"] - len(done_at_kill)
    samples = by_id(out)
    assert len({s["id"] for s in samples}) == len(samples)  # no duplicate
    assert samples == by_id(ref)  # no loss, and the same samples
    progress = read_jsonl(out / PROGRESS)
    assert len({p["chunk_id"] for p in progress}) == len(progress) == reference["chunks_done"]
    assert rows(out, PROGRESS) == rows(ref, PROGRESS) and rows(out, REJECTED) == rows(ref, REJECTED)
    assert stats["samples"] == reference["samples"] and stats["rejections"] == reference["rejections"]


NO_RAY_IMPORT = """
import json, sys
from raft.cli import cli
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))))
"""


@pytest.mark.slow  # a subprocess that loads torch, builds an index and runs the generation
def test_raft_generate_without_engine_ray_never_imports_ray(teacher, small_corpus, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", NO_RAY_IMPORT, "generate", str(small_corpus), "--out", str(out),
                           "--index-dir", str(tmp_path / "index"), "--model", teacher.url, "--questions", "1",
                           "--distractors", "1", "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == []
    assert json.loads("\n".join(lines[:-1]))["chunks_done"] == 3  # it really ran
    assert teacher.served > 0


def test_raft_ray_flags_need_engine_ray(small_corpus, tmp_path):
    from click.testing import CliRunner

    from raft.cli import cli

    result = CliRunner().invoke(cli, ["generate", str(small_corpus), "--out", str(tmp_path / "o"),
                                      "--ray-workers", "2"])
    assert result.exit_code == 2 and "need --engine ray" in result.output
    assert not (tmp_path / "o").exists()
