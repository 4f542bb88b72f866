"""The shipped course's RAFT adapter (issue 15, README "The whole course"): recorded for the shipped course, the
default model there in `rag ask` (here), `rag serve` (tests/rag/server/test_chat.py) and the app
(tests/ui/test_app.py), and nowhere else; `--model bundled-base` opts out."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rag.generation.adapter import COURSE_ADAPTER, PEFT_WEIGHTS, course_share, is_adapter_folder, read_adapter_info
from rag.generation.models import BUNDLED_MODEL_ID
from rag.generation.spec import COURSE_MODEL_ID
from rag.index.store import current_generation


def test_the_shipped_adapter_is_recorded_for_the_shipped_course(course_index) -> None:
    assert is_adapter_folder(COURSE_ADAPTER)
    info = read_adapter_info(COURSE_ADAPTER)
    assert (info.base, info.prompt_format, info.extra["method"]) == ("bundled", "raft", "raft")
    manifest = json.loads((current_generation(course_index.index_dir) / "manifest.json").read_text(encoding="utf-8"))
    assert course_share(info, {n: f["sha256"] for n, f in manifest["files"].items()}) == 1.0  # corpus/ as shipped
    assert (COURSE_ADAPTER / PEFT_WEIGHTS).stat().st_size < 12 * 2**20  # a few MB, not a merged model
    peft_config = json.loads((COURSE_ADAPTER / "adapter_config.json").read_text(encoding="utf-8"))
    assert peft_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # no machine's path


@pytest.mark.llm
def test_rag_ask_answers_with_the_course_adapter_by_default_and_bundled_base_opts_out(course_index, tmp_path,
                                                                                      monkeypatch) -> None:
    from rag.cli import cli

    empty = tmp_path / "rag.toml"
    empty.write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(empty))
    monkeypatch.delenv("RAG_MODEL", raising=False)
    args = ["ask", "--json", "--index-dir", str(course_index.index_dir), "--max-new-tokens", "12",
            "What does LoRA freeze during fine-tuning?"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["model"] == COURSE_MODEL_ID and out["answer"].strip() and not out["abstained"]
    assert out["quote"] and "<ANSWER>" not in out["answer"] and "##" not in out["answer"]
    r = CliRunner().invoke(cli, [*args[:-1], "--model", "bundled-base", args[-1]])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == BUNDLED_MODEL_ID
