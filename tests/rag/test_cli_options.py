"""Flags built from the options models (rag.common.click_options): one flag per setting, defaults and ranges in
`--help`, one-line errors from the model, and deprecated spellings that still work with a warning."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from raft.cli import cli as raft_cli
from raft.course.options import CourseOptions
from raft.synth.config import RaftConfig
from raft.train.config import TrainConfig
from rag.cli import cli as rag_cli
from rag.common.click_options import deprecated_alias, model_option
from rag.common.options import Options


def _flags(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


def test_every_train_option_has_its_flag_with_the_models_default_and_range() -> None:
    params = _flags(raft_cli.commands["train"])
    for name, info in TrainConfig.model_fields.items():
        assert name in params, name
        assert params[name].default == info.default, name
        assert params[name].help == info.description, name
    out = CliRunner().invoke(raft_cli, ["train", "--help"], terminal_width=200).output
    assert "--lora-dropout FLOAT RANGE" in out and "[default: 0.05; 0<=x<1]" in out
    assert "--method [raft|dsf]" in out and "--distractor-strategy [random]" in out


def test_generate_flags_come_from_raft_config() -> None:
    params = _flags(raft_cli.commands["generate"])
    for name in ("questions", "distractors", "p", "strategy", "workers", "batch_size", "answer_mode", "limit", "seed"):
        assert params[name].default == RaftConfig.model_fields[name].default, name
    assert params["strategy"].opts == ["--distractor-strategy"]
    out = CliRunner().invoke(raft_cli, ["generate", "--help"], terminal_width=200).output
    assert "--questions INTEGER RANGE" in out and "[default: 3; 1<=x<=20]" in out
    assert "--max-new-tokens" in out and "--max-tokens" not in out  # the old spelling is hidden


def test_course_help_says_defaults_and_ranges_the_model_checks() -> None:
    out = CliRunner().invoke(raft_cli, ["course", "--help"], terminal_width=200).output
    assert "Questions per chunk.  [default: 3; in [1, 20]]" in out
    assert "--max-new-tokens INTEGER" in out and "--max-tokens" not in out
    assert set(_flags(raft_cli.commands["course"])) >= set(CourseOptions.model_fields) - {
        "p", "strategy", "min_chunk_words", "lora_alpha", "eval_batch_size", "install", "eval_settings"}


def test_a_bad_course_value_is_one_line_from_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what `raft course` sets for its process
    result = CliRunner().invoke(raft_cli, ["course", str(tmp_path), "--questions", "0", "--plan"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: --questions must be in [1, 20], got 0"


def test_the_old_max_tokens_spelling_still_works_with_a_warning(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    # the value reaches the option: the model refuses it under the documented flag's name
    result = CliRunner().invoke(raft_cli, ["course", str(tmp_path), "--max-tokens", "9000", "--plan"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["raft: --max-tokens is deprecated: use --max-new-tokens (the same setting)",
                                          "Error: --max-new-tokens must be in [1, 8192], got 9000"]
    both = CliRunner().invoke(raft_cli, ["generate", str(tmp_path), "--out", str(tmp_path / "o"),
                                         "--max-tokens", "5", "--max-new-tokens", "5"])
    assert both.exit_code == 2 and "--max-tokens and --max-new-tokens are the same setting" in both.stderr
    assert not (tmp_path / "o").exists()
    bad = CliRunner().invoke(rag_cli, ["ask", "q", "--max-tokens", "0"])
    assert bad.exit_code == 2 and "'--max-tokens'" in bad.stderr and "1<=x<=8192" in bad.stderr
    out = CliRunner().invoke(rag_cli, ["ask", "--help"], terminal_width=200).output
    assert "--max-new-tokens INTEGER RANGE" in out and "--max-tokens" not in out


class _Toy(Options):
    size: int = 3


def test_deprecated_alias_sets_the_documented_option() -> None:
    seen: list[int | None] = []

    @click.command()
    @deprecated_alias("--old", "--size", "size", "toy")
    @model_option(_Toy, "size")
    def toy(size: int | None) -> None:
        seen.append(size)

    runner = CliRunner()
    assert runner.invoke(toy, ["--old", "7"]).stderr == "toy: --old is deprecated: use --size (the same setting)\n"
    assert runner.invoke(toy, ["--size", "5"]).stderr == ""
    assert runner.invoke(toy, []).exit_code == 0
    assert seen == [7, 5, 3]
