"""A LoRA adapter folder as a model (rag.generation.adapter): validated, resolved by the one parser, merged once
onto its base by peft into the model cache, and then answering exactly as the peft-merged model does.

Real parts: the bundled model converted into the default cache, a real peft LoRA adapter on it (its B matrices
set to seeded random values, so it changes the answers), the real LocalGenerator with the transformers decoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rag.generation.spec as spec_module
from rag.errors import GeneratorError
from rag.generation.adapter import (
    ADAPTER_INFO,
    PEFT_CONFIG,
    AdapterInfo,
    course_share,
    is_adapter_folder,
    read_adapter_info,
)
from rag.generation.spec import resolve_model


def _info(folder: Path, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PEFT_CONFIG).write_text("{}", encoding="utf-8")
    (folder / ADAPTER_INFO).write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return folder


@pytest.mark.parametrize("data, error", [
    ("{oops", "cannot read"),
    ({"prompt_format": "raft"}, "field 'base' must name the base model"),
    ({"base": "bundled", "prompt_format": "alpaca"}, "prompt_format must be one of chat, raft"),
    ({"base": "bundled", "course_files": ["a.md"]}, "course_files must map file names"),
])
def test_a_bad_adapter_record_is_one_line_naming_its_file(tmp_path: Path, data: object, error: str) -> None:
    folder = _info(tmp_path / "a", data)
    with pytest.raises(GeneratorError, match=error) as e:
        read_adapter_info(folder)
    assert str(folder / ADAPTER_INFO) in str(e.value) and "\n" not in str(e.value)


def test_the_course_share_counts_indexed_files_of_the_adapters_course() -> None:
    info = AdapterInfo("bundled", course_files={"a.md": "1" * 64, "b.md": "2" * 64})
    assert course_share(info, {"a.md": "1" * 64, "b.md": "2" * 64}) == 1.0
    assert course_share(info, {"renamed.md": "1" * 64, "mine.md": "3" * 64}) == 0.5  # by content, not by name
    assert course_share(info, {"other.md": "4" * 64}) == 0.0
    assert course_share(info, {}) == 0.0 and course_share(AdapterInfo("bundled"), {"a.md": "1" * 64}) == 0.0


def test_adapter_folders_and_the_course_keywords_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _info(tmp_path / "adapter", {"base": "bundled"})
    assert is_adapter_folder(folder) and not is_adapter_folder(tmp_path)
    spec = resolve_model(str(folder))
    assert (spec.kind, spec.path) == ("adapter", folder) and spec.local
    assert resolve_model("bundled-base").kind == resolve_model("bundled").kind == "bundled"
    monkeypatch.setattr(spec_module, "COURSE_ADAPTER", tmp_path / "not-shipped")
    with pytest.raises(GeneratorError, match="bundled-raft: this install has no course adapter"):
        resolve_model("bundled-raft")
    monkeypatch.setattr(spec_module, "COURSE_ADAPTER", folder)
    assert (resolve_model(" Bundled-RAFT ").kind, resolve_model("bundled-raft").path) == ("adapter", folder)
    _info(tmp_path / "chained", {"base": str(folder)})
    with pytest.raises(GeneratorError, match="the base must be a local model, not a server or another adapter"):
        resolve_model(str(tmp_path / "chained")).local_dir(tmp_path / "cache")


@pytest.fixture(scope="module")
def real_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    """A real peft LoRA adapter on the bundled model (B matrices seeded random, so it changes the model), the
    greedy reply of peft's own merged model to PROMPT, and its log-probability of CONTINUATION."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = resolve_model("bundled").local_dir()
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    torch.manual_seed(0)  # A's initialisation, then B: the same adapter whatever ran before in this process
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(folder, safe_serialization=True)
    (folder / ADAPTER_INFO).write_text(json.dumps({"base": "bundled", "prompt_format": "raft"}), encoding="utf-8")
    merged = peft_model.merge_and_unload().eval()
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = merged.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        # the summed log-probability of CONTINUATION after the prompt, from peft's own merged model
        cont = tokenizer(CONTINUATION, add_special_tokens=False, return_tensors="pt")["input_ids"]
        full = torch.cat([ids["input_ids"], cont], dim=1)
        logp = torch.log_softmax(merged(full).logits[0, :-1].float(), -1)
        n = cont.shape[1]
        score = float(logp[-n:].gather(1, full[0, -n:, None]).sum())
    return folder, tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True), score


PROMPT = [{"role": "user", "content": "Name three colours."}]
CONTINUATION = "Red, green and blue."


@pytest.mark.llm
def test_an_adapter_is_merged_once_and_answers_as_the_peft_model(real_adapter, tmp_path: Path) -> None:
    from rag.generation.base import GenerationParams
    from rag.generation.factory import get_generator

    folder, expected, score = real_adapter
    params = GenerationParams(max_new_tokens=12, repetition_penalty=1.0)
    gen = get_generator(str(folder), cache_dir=tmp_path, decoder="transformers", prefill_dtype="float32")
    assert gen.prompt_format == "raft" and gen.model_dir.parent == tmp_path and "+lora-" in gen.model_dir.name
    assert gen.generate(PROMPT, params) == expected
    ((ours, n),) = gen.continuation_logprobs(PROMPT, "", [CONTINUATION])
    ((base, _),) = get_generator("bundled", decoder="transformers", prefill_dtype="float32").continuation_logprobs(
        PROMPT, "", [CONTINUATION])
    assert ours == pytest.approx(score, abs=1e-3 * n)  # the merged folder is peft's merged model
    assert abs(base - score) > 0.05  # and the adapter changed the model
    stamp = (gen.model_dir / "model.safetensors").stat().st_mtime_ns
    again = resolve_model(str(folder)).local_dir(tmp_path)
    assert again == gen.model_dir and (again / "model.safetensors").stat().st_mtime_ns == stamp  # merged once


def test_the_default_model_is_the_course_adapter_only_on_its_course(course_index, settings, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`model = "auto"` (the default) loads the shipped course adapter when the index is mostly its course's
    files, the base anywhere else; a named model is never replaced. Nothing is loaded: only specs are compared."""
    import rag.generation.adapter as adapter_module
    from rag.api import effective_model, index_corpus
    from rag.index.store import current_generation
    from tests.conftest import write_small_corpus

    manifest = json.loads((current_generation(course_index.index_dir) / "manifest.json").read_text(encoding="utf-8"))
    course = {name: f["sha256"] for name, f in manifest["files"].items()}
    folder = _info(tmp_path / "course_adapter", {"base": "bundled", "course_files": course})
    monkeypatch.setattr(adapter_module, "COURSE_ADAPTER", folder)
    monkeypatch.setattr(spec_module, "COURSE_ADAPTER", folder)
    auto = course_index.model_copy(update={"model": "auto"})
    assert effective_model(auto) == "bundled-raft" and resolve_model(effective_model(auto)).path == folder
    for named in ("bundled-base", "bundled", "http://127.0.0.1:9/v1"):
        assert effective_model(course_index.model_copy(update={"model": named})) == named
    index_corpus(write_small_corpus(settings.corpus_dir), settings)  # another course
    assert settings.model == "auto" and effective_model(settings) == "bundled"
    assert effective_model(auto.model_copy(update={"index_dir": tmp_path / "no-index"})) == "bundled"
    monkeypatch.setattr(adapter_module, "COURSE_ADAPTER", tmp_path / "not-shipped")
    assert effective_model(auto) == "bundled"  # an install without the adapter
