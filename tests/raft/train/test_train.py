"""`raft train`: real bundled SmolLM2-135M, real peft LoRA, a tiny hand-made RAFT dataset in temp folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raft.prompts import instruction
from raft.splits import parse_split, split_by_chunk
from raft.train.config import (
    ADAPTER,
    CHECKPOINTS,
    LOG,
    MERGED,
    REPORT,
    TARGET_MODULES,
    TrainConfig,
)
from raft.train.data import ChatEncoder, Example, load_examples, mean_loss
from raft.train.loop import train
from raft.train.model import load_base, resolve_base
from rag.errors import RagError

FACTS = [
    ("LoRA", "LoRA freezes the base weights and trains two small matrices.", "What does LoRA train?",
     "two small matrices"),
    ("RLHF", "RLHF tunes a model with a reward model built from human preferences.", "What does RLHF use?",
     "a reward model"),
    ("Temperature", "A low temperature makes sampling nearly greedy and repeatable.", "What does a low temperature do?",
     "nearly greedy sampling"),
    ("Attention", "Self-attention lets each token look at every other token.", "What does self-attention do?",
     "tokens look at each other"),
    ("Prompting", "Few-shot prompting puts worked examples inside the prompt.", "What is few-shot prompting?",
     "examples in the prompt"),
    ("Quantization", "Quantization stores weights in fewer bits to save memory.", "Why quantize a model?",
     "to save memory"),
]
TINY = dict(base="bundled", epochs=1, lr=3e-3, lora_r=4, lora_alpha=8, lora_dropout=0.05, batch_size=1, grad_accum=1,
            max_length=128, split="1.0", seed=0, max_val_samples=0, save_steps=100, threads=1)


def make_record(i: int, fact: tuple[str, str, str, str], distractor: str, oracle_first: bool) -> dict:
    """A dataset.jsonl record in the `raft generate` format (two short documents, one of them the oracle)."""
    topic, oracle, question, final = fact
    docs = [oracle, distractor] if oracle_first else [distractor, oracle]
    cot = f"##begin_quote##{oracle}##end_quote## <ANSWER>: {final}"
    return {
        "id": f"raft-{i:016x}-0", "type": "general", "question": question,
        "context": {"title": ["notes.md", "notes.md"], "sentences": docs}, "oracle_context": oracle,
        "oracle_present": True, "oracle_index": docs.index(oracle), "distractor_ids": [1000 + i], "cot_answer": cot,
        "final_answer": final, "quotes_verified": 1, "instruction": instruction(docs, question),
        "source_chunk_id": i, "source": f"notes.md > {topic}", "generator_model": "hand-written", "seed": 0,
    }


def write_dataset(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = [make_record(i, f, FACTS[(i + 1) % len(FACTS)][1], i % 2 == 0) for i, f in enumerate(FACTS)]
    return write_dataset(tmp_path_factory.mktemp("raft") / "data", records)


@pytest.fixture(scope="module")
def base() -> tuple[object, object]:
    """A fresh float32 base model + tokenizer (the bundled GGUF, converted once into the shared cache)."""
    model_dir, _ = resolve_base("bundled")
    return load_base(model_dir)


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted training run: 6 samples x 1 epoch = 6 optimizer steps."""
    out = tmp_path_factory.mktemp("runs") / "full"
    report = train(tiny_dataset, out, TrainConfig(**TINY), progress=False)
    return out, report


# ------------------------------------------------------------------------------------------- data


def test_trains_only_on_the_train_split(tmp_path: Path) -> None:
    records = [make_record(i, FACTS[i % len(FACTS)], FACTS[(i + 1) % len(FACTS)][1], True) for i in range(20)]
    folder = write_dataset(tmp_path / "data", records)
    config = TrainConfig(split="0.6,0.2,0.2", seed=3, max_val_samples=100)
    train_ex, val_ex, info = load_examples(folder, config)
    parts = split_by_chunk(records, parse_split(config.split), config.seed)
    assert [e.id for e in train_ex] == [r["id"] for r in parts["train"]]
    assert [e.id for e in val_ex] == [r["id"] for r in parts["validation"]]
    assert not {e.id for e in train_ex} & {r["id"] for r in parts["test"]}
    assert info["format"] == "raft" and info["train"] == 12


def test_reads_a_chat_export_the_same_way(tiny_dataset: Path, tmp_path: Path) -> None:
    from raft.export import export

    result = export(tiny_dataset, "chat", "jsonl", "1.0", tmp_path / "chat")
    from_chat, _, info = load_examples(Path(result["dir"]), TrainConfig(split="1.0"))
    from_records, _, _ = load_examples(tiny_dataset, TrainConfig(split="1.0"))
    assert info["format"] == "chat"
    key = lambda e: (e.id, e.docs, e.question, e.answer, e.oracle_index)  # noqa: E731
    assert sorted(map(key, from_chat)) == sorted(map(key, from_records))


@pytest.mark.llm
def test_labels_cover_the_answer_and_end_of_turn_only(base) -> None:
    _, tok = base
    ex = Example("x", ["Distractor text about cats.", "LoRA trains small matrices."], "What does LoRA train?",
                 "##begin_quote##LoRA trains small matrices.##end_quote## <ANSWER>: small matrices", oracle_index=1)
    enc = ChatEncoder(tok, 1024).encode(ex)
    labelled = [t for t in enc.labels if t != -100]
    assert enc.input_ids[-len(labelled):] == labelled  # the answer is the end of the sequence
    assert labelled[-1] == tok.convert_tokens_to_ids("<|im_end|>")  # the model learns to stop
    assert tok.decode(labelled[:-1]) == ex.answer
    prompt = tok.decode(enc.input_ids[: -len(labelled)])
    assert prompt.endswith("What does LoRA train?<|im_end|>\n<|im_start|>assistant\n")
    assert not enc.truncated


@pytest.mark.llm
def test_long_prompts_lose_distractors_never_answer_tokens(base) -> None:
    _, tok = base
    filler = " ".join(["Unrelated words about the weather and other things."] * 6)
    oracle = "LoRA trains small matrices."
    ex = Example("y", [filler, oracle, filler, filler], "What does LoRA train?",
                 f"##begin_quote##{oracle}##end_quote## <ANSWER>: small matrices", oracle_index=1)
    full = ChatEncoder(tok, 4096).encode(ex)
    enc = ChatEncoder(tok, 120).encode(ex)
    assert len(full.input_ids) > 120 >= len(enc.input_ids)
    assert enc.docs_dropped == 3 and not enc.docs_cut  # only the oracle is left, whole
    assert [t for t in enc.labels if t != -100] == [t for t in full.labels if t != -100]
    assert f"<DOCUMENT>{oracle}</DOCUMENT>" in tok.decode(enc.input_ids)
    assert ChatEncoder(tok, 40).encode(ex) is None  # question + answer alone don't fit: skipped, never cut


# ------------------------------------------------------------------------------------------- training


@pytest.mark.llm
def test_training_moves_the_lora_weights(trained) -> None:
    from safetensors.torch import load_file

    out, report = trained
    weights = load_file(str(out / ADAPTER / "adapter_model.safetensors"))
    b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert len(b) == 30 * 7  # every layer's q,k,v,o,gate,up,down projection
    assert all(float(v.abs().max()) > 0 for v in b.values())  # LoRA B starts at zero
    assert report["target_modules"] == sorted(TARGET_MODULES)
    assert report["steps"] == 6 and report["samples_seen"] == 6 and report["samples"] == 6
    log = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert (out / "loss.png").stat().st_size > 1000


@pytest.mark.llm
def test_training_lowers_the_loss_on_its_data(trained, tiny_dataset: Path, base) -> None:
    from transformers import AutoModelForCausalLM

    out, _ = trained
    model, tok = base
    examples, _, _ = load_examples(tiny_dataset, TrainConfig(split="1.0"))
    encoded = [ChatEncoder(tok, 128).encode(e) for e in examples]
    before = mean_loss(model, encoded, tok.pad_token_id, batch_size=len(encoded))
    tuned = AutoModelForCausalLM.from_pretrained(out / MERGED, local_files_only=True)
    after = mean_loss(tuned, encoded, tok.pad_token_id, batch_size=len(encoded))
    print(f"answer loss on the training samples: {before:.3f} before, {after:.3f} after")
    assert after < 0.5 * before, (before, after)


@pytest.mark.llm
def test_merged_model_generates_through_local_generator(trained) -> None:
    from raft.prompts import student_messages
    from rag.generation.base import GenerationParams
    from rag.generation.local import LocalGenerator

    out, _ = trained
    gen = LocalGenerator(out / MERGED)
    fact = FACTS[0]
    text = gen.generate(student_messages([fact[1]], fact[2]), GenerationParams(max_new_tokens=12))
    assert text.strip()
    # the training output folder itself is accepted wherever a model path is (rag ask/serve --model OUT)
    from rag.generation.factory import get_generator

    assert get_generator(str(out)).model_dir == out / MERGED


@pytest.mark.llm
def test_resume_continues_at_the_saved_step_and_matches(trained, tiny_dataset: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "resumed"
    seen: list[int] = []

    def stop_at_3(row: dict) -> None:
        seen.append(row["step"])
        if row["step"] == 3:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run: step 3 is done but not checkpointed

    config = TrainConfig(**{**TINY, "save_steps": 2})  # save_steps is not part of the run's identity
    with pytest.raises(KeyboardInterrupt):
        train(tiny_dataset, out, config, progress=False, on_step=stop_at_3)
    assert sorted(p.name for p in (out / CHECKPOINTS).iterdir()) == ["step-000002"]
    seen.clear()
    report = train(tiny_dataset, out, config, progress=False, on_step=lambda row: seen.append(row["step"]))
    assert report["resumed_from_step"] == 2 and seen == [3, 4, 5, 6]
    log = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    # weights, optimizer state, sample order and dropout all came back: same result as the uninterrupted run
    full_log = [json.loads(line) for line in (trained[0] / LOG).read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in full_log], rel=1e-4)
    a = load_file(str(out / ADAPTER / "adapter_model.safetensors"))
    b = load_file(str(trained[0] / ADAPTER / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(float((a[k] - b[k]).abs().max()) < 1e-5 for k in a)
    again = train(tiny_dataset, out, config, progress=False)
    assert again["already_trained"]


@pytest.mark.llm
def test_different_arguments_against_an_existing_out_are_refused(trained, tiny_dataset: Path) -> None:
    out, _ = trained
    with pytest.raises(RagError, match=r"other arguments \(lr: 0\.003 before, 0\.01 now\)"):
        train(tiny_dataset, out, TrainConfig(**{**TINY, "lr": 0.01}), progress=False)
    assert json.loads((out / REPORT).read_text())["args"]["lr"] == 0.003


def test_bad_input_is_a_one_line_error(tiny_dataset: Path, tmp_path: Path) -> None:
    cases = [
        (tmp_path / "missing", TrainConfig(), "no dataset at"),
        (write_dataset(tmp_path / "empty", []), TrainConfig(), "has no samples"),
        (tiny_dataset, TrainConfig(base=str(tmp_path / "no-model")), "unknown model .*no-model"),
    ]
    for dataset, config, message in cases:
        with pytest.raises(RagError, match=message) as info:
            train(dataset, tmp_path / "out", config, progress=False)
        assert "\n" not in str(info.value)
    for given, message in [({"split": "0.5,0.6"}, "--split needs 1 to 3"), ({"lr": 0}, r"^--lr must be > 0, got 0$")]:
        with pytest.raises(RagError, match=message) as info:  # refused when the options are made
            TrainConfig(**given)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_second_run_on_the_same_out_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # what a running `raft train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RagError, match="another `raft train` is writing"):
            train(tiny_dataset, out, TrainConfig(**TINY), progress=False)
    assert not (out / "train_config.json").exists()


def test_a_folder_with_the_users_own_loss_plot_is_refused_not_cleared(tiny_dataset: Path, tmp_path: Path) -> None:
    """Issue 31: `raft train --no-resume` removes the files a run writes (loss.png among them); in a folder it
    did not make (no train_config.json) a file of that name is the user's: refused, never deleted."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "loss.png").write_bytes(b"my own plot")
    with pytest.raises(RagError, match="has loss.png but no train_config.json") as info:
        train(tiny_dataset, out, TrainConfig(**TINY), progress=False, resume=False)
    assert "\n" not in str(info.value)
    assert (out / "loss.png").read_bytes() == b"my own plot"
