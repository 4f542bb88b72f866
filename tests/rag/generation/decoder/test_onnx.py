"""The ONNX Runtime decoder (rag/generation/decoder/onnx.py) and the prompt cache (rag/generation/prefill.py), against
the real bundled model, real ONNX decoders built by onnxruntime-genai's builder, and a real merged LoRA model
(no mocks). Speed is measured by bench/generation.py, never asserted here."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from rag.errors import GeneratorError, RagError
from rag.generation.base import GenerationCancelled, GenerationParams, cancel_scope
from rag.generation.decoder import (
    build_onnx_decoder,
    is_packed,
    prune_stale_decoders,
    resolve_decoder,
    resolve_draft,
)
from rag.generation.local import LocalGenerator
from rag.generation.models import bundled_gguf_path, convert_gguf

pytestmark = pytest.mark.llm

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Explain in a few sentences what a language model is."}],
    [{"role": "system", "content": "Answer in one sentence."},
     {"role": "user", "content": "Why does fine-tuning need labelled examples?"}],
]
GREEDY = GenerationParams(max_new_tokens=24, repetition_penalty=1.1)
PASSAGE = ("LoRA (low-rank adaptation) freezes all the weights of the pre-trained model and trains two small "
           "low-rank matrices whose product is added to the frozen weight matrix. Only the adapter is stored. ") * 6


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test of this module runs with one torch (and so one ONNX Runtime) thread."""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh model cache: the GGUF conversion, then the ONNX decoders the tests build into it."""
    root = tmp_path_factory.mktemp("models")
    convert_gguf(bundled_gguf_path(), root)
    return root


@pytest.fixture(scope="module")
def ref(root: Path) -> LocalGenerator:
    """The reference: plain transformers, prompts read in float32 (every fixture here reads them so)."""
    return LocalGenerator(cache_dir=root, decoder="transformers", prefill_dtype="float32")


@pytest.fixture(scope="module")
def fp32(root: Path) -> LocalGenerator:
    return LocalGenerator(cache_dir=root, decoder="fp32", prefill_dtype="float32")


@pytest.fixture(scope="module")
def int8(root: Path) -> LocalGenerator:
    return LocalGenerator(cache_dir=root, decoder="int8", prefill_dtype="float32")


def _live_generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rag-generate" and t.is_alive()]


# --------------------------------------------------------------------------- choosing the decoder


def test_decoder_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_DECODER", "transformers")  # the environment is not read here: Settings reads it
    assert resolve_decoder("auto") == resolve_decoder(None) == "packed-a8"
    assert resolve_decoder("fp32") == "fp32"
    assert resolve_decoder("int4") == "int4"
    assert resolve_decoder("packed-a8") == "packed-a8"
    with pytest.raises(GeneratorError,
                       match=r"unknown decoder 'fast': choose auto, int4, int8, fp32, packed-a8, transformers"):
        resolve_decoder("fast")


def test_draft_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_DRAFT", "off")  # the environment is not read here: Settings reads it
    assert resolve_draft("auto", "fp32") == resolve_draft(None, "fp32") == "int8"
    assert resolve_draft("auto", "int8") == "lookup"  # a quantised decoder is as cheap as its draft would be
    assert resolve_draft("auto", "fp32", packed=True) == "off"  # its passes of several tokens cost 2.5-4x
    assert resolve_draft("lookup", "fp32", packed=True) == "lookup"
    assert resolve_draft("auto", "packed-a8", packed=True) == "off" and resolve_draft("int8", "packed-a8") == "lookup"
    assert resolve_draft("off", "fp32") == "off" and resolve_draft("int4", "fp32") == "int4"
    with pytest.raises(GeneratorError, match=r"unknown draft 'big': choose auto, int8, int4, lookup, off"):
        resolve_draft("big", "fp32")


def test_decoder_and_draft_are_settings_passed_to_the_local_backend(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    from rag.api import backend_options
    from rag.config import load_settings

    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "empty.toml"))
    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_DECODER", " Transformers ")
    monkeypatch.setenv("RAG_DRAFT", "lookup")
    monkeypatch.setenv("RAG_PREFILL_DTYPE", "BFloat16")
    settings = load_settings()
    assert (settings.decoder, settings.draft, settings.prefill_dtype) == ("transformers", "lookup", "bfloat16")
    assert backend_options(settings, "bundled") == {"cache_dir": None, "decoder": "transformers", "draft": "lookup",
                                                    "prefill_dtype": "bfloat16"}
    assert load_settings(decoder="int8").decoder == "int8"  # a flag beats the environment
    monkeypatch.setenv("RAG_DECODER", "")
    assert load_settings().decoder == "auto"
    monkeypatch.setenv("RAG_DECODER", "int3")
    with pytest.raises(RagError, match=r"invalid setting decoder \(from RAG_DECODER\): Input should be 'auto', 'fp32'"):
        load_settings()
    monkeypatch.setenv("RAG_DECODER", "auto")
    monkeypatch.setenv("RAG_DRAFT", "big")
    with pytest.raises(RagError, match=r"invalid setting draft \(from RAG_DRAFT\)"):
        load_settings()


def test_transformers_decoder_is_plain_generate(ref: LocalGenerator) -> None:
    assert ref.decoder == "transformers" and ref._decoder is None and not ref.parallel_requests


# --------------------------------------------------------------------------- the decoder cache


def test_decoders_are_built_once_and_reused(root: Path, fp32: LocalGenerator) -> None:
    folder = fp32._decoder.onnx_dir
    assert folder.parent == root and (folder / "model.onnx").is_file()
    manifest = json.loads((folder / "rag_decoder.json").read_text())
    assert manifest["precision"] == "fp32" and manifest["data_bytes"] == (folder / "model.onnx.data").stat().st_size
    packed = manifest["packed"]  # the bundled model comes from a Q4_1 GGUF: every matrix is exact 4-bit blocks
    assert packed["packed"] == packed["matrices"] > 4 * fp32._loaded.model.config.num_hidden_layers
    assert packed["bytes_after"] == manifest["data_bytes"] < packed["bytes_before"] / 2
    assert is_packed(folder) and fp32._decoder.draft_dir is None and not fp32._decoder.engine.speculate
    before = (folder / "model.onnx.data").stat().st_mtime_ns
    assert build_onnx_decoder(fp32.model_dir, "fp32", root) == folder
    assert (folder / "model.onnx.data").stat().st_mtime_ns == before  # not rebuilt
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left


def _accuracy_levels(folder: Path) -> set[int]:
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
            if a.name == "accuracy_level"}


def test_packed_a8_is_the_packed_decoder_against_8_bit_activations(root: Path, fp32: LocalGenerator) -> None:
    """The same exact 4-bit blocks (same weights file), every 4-bit product told to quantize its input to
    int8 (MatMulNBits accuracy level 4, as llama.cpp computes Q4_1): written once, its own folder, close to fp32."""
    a8 = LocalGenerator(cache_dir=root, decoder="packed-a8", prefill_dtype="float32")
    folder, packed = a8._decoder.onnx_dir, fp32._decoder.onnx_dir
    assert folder != packed and folder.parent == root and a8.decoder == "packed-a8"
    manifest = json.loads((folder / "rag_decoder.json").read_text())
    assert manifest["precision"] == "packed-a8" and manifest["accuracy_level"] == 4 and is_packed(folder)
    assert (folder / "model.onnx.data").read_bytes() == (packed / "model.onnx.data").read_bytes()
    assert _accuracy_levels(folder) == {4} and _accuracy_levels(packed) == {1}
    before = (folder / "model.onnx").stat().st_mtime_ns
    assert build_onnx_decoder(fp32.model_dir, "packed-a8", root) == folder
    assert (folder / "model.onnx").stat().st_mtime_ns == before  # written once
    assert a8._decoder.draft_dir is None and not a8._decoder.engine.speculate
    one = GenerationParams(max_new_tokens=1)
    for messages in PROMPTS:  # the first token comes from the prompt read by transformers, the same for both
        assert a8.generate(messages, one) == fp32.generate(messages, one)
    texts = [a8.generate(m, GREEDY) for m in PROMPTS]
    assert all(t.strip() for t in texts)


def test_a_damaged_decoder_is_rebuilt_and_every_build_says_so(root: Path, fp32: LocalGenerator, tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "cache"
    orphan = _fake_decoder(other / "gone-onnx-int8-0", tmp_path / "deleted-run" / "merged", "int8", "0")
    first = build_onnx_decoder(fp32.model_dir, "int4", other)
    assert not orphan.exists()  # a build prunes the decoders of folders that are gone
    said = capfd.readouterr().err
    assert "rag: building the ONNX int4 decoder of" in said and "read 15/30 layers" in said
    assert "rag: built the ONNX int4 decoder of" in said
    assert build_onnx_decoder(fp32.model_dir, "int4", other) == first
    assert "rag:" not in capfd.readouterr().err  # a cached decoder is reused silently
    (first / "model.onnx.data").write_bytes(b"truncated")
    again = build_onnx_decoder(fp32.model_dir, "int4", other)
    assert again == first and (again / "model.onnx.data").stat().st_size > 1_000_000
    assert "rag: building the ONNX int4 decoder of" in capfd.readouterr().err


def test_a_decoder_that_cannot_open_is_a_one_line_error(fp32: LocalGenerator, tmp_path: Path) -> None:
    from rag.generation.decoder import OnnxDecoder

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(GeneratorError, match=r"cannot open the ONNX decoder .*garbage.*delete the folder"):
        OnnxDecoder(fp32._loaded.model.config, garbage, 1)
    decoder_dir = fp32._decoder.onnx_dir
    small = fp32._loaded.model.config.num_hidden_layers
    fp32._loaded.model.config.num_hidden_layers = small + 1  # the decoder no longer matches the model
    try:
        with pytest.raises(GeneratorError, match="does not match llama with 31 layers"):
            OnnxDecoder(fp32._loaded.model.config, decoder_dir, 1)
    finally:
        fp32._loaded.model.config.num_hidden_layers = small


def test_a_model_loaded_again_reads_its_own_prompts_under_its_own_cancel(root: Path, fp32: LocalGenerator) -> None:
    """The process-wide model cache can drop a model (its LRU, `raft eval` between models) while the ONNX
    decoder of its folder stays open. A LocalGenerator made afterwards loads the folder again; its prompts
    must be read by that copy, the one its lock and cancellation hooks guard. (They went through the dropped
    copy: a cancel before the first token still let one through, and two locks guarded one model.)"""
    from rag.generation.local import release_local_models

    release_local_models()
    again = LocalGenerator(cache_dir=root, decoder="fp32", prefill_dtype="float32")
    assert again._loaded is not fp32._loaded and again._loaded.model is not fp32._loaded.model
    old_prompts = [ids for ids, _ in fp32._loaded.prompt_cache.entries]
    params = GenerationParams(max_new_tokens=3)
    text = again.generate(PROMPTS[2], params)
    read = [ids for ids, _ in again._loaded.prompt_cache.entries]
    assert len(read) == 1  # read by its own copy...
    assert [ids for ids, _ in fp32._loaded.prompt_cache.entries] == old_prompts  # ...not by the dropped one
    assert text == fp32.generate(PROMPTS[2], params)
    stream = again.stream(PROMPTS[1], GenerationParams(max_new_tokens=40))
    stream.cancel()  # before the first piece: the prompt's first layer stops, no token is written
    assert list(stream) == []
    assert [ids for ids, _ in again._loaded.prompt_cache.entries] == read  # that prompt was never read
    assert again.generate(PROMPTS[1], params).strip()  # and the model is free for the next answer


def _fake_decoder(folder: Path, model_dir: Path, precision: str, source: str) -> Path:
    """A decoder folder as far as pruning can tell (its manifest)."""
    folder.mkdir(parents=True)
    (folder / "rag_decoder.json").write_text(json.dumps({"model_dir": str(model_dir), "precision": precision,
                                                         "source": source}))
    return folder


def test_stale_decoders_are_pruned_and_current_ones_kept(fp32: LocalGenerator, tmp_path: Path) -> None:
    current = fp32._decoder.onnx_dir.name.rsplit("-", 1)[1]  # the fingerprint of the model folder as it is
    cache = tmp_path / "cache"
    kept = _fake_decoder(cache / "m-onnx-fp32-cur", fp32.model_dir, "fp32", current)
    changed = _fake_decoder(cache / "m-onnx-fp32-old", fp32.model_dir, "fp32", "old")  # before a retrain
    gone = _fake_decoder(cache / "merged-onnx-fp32-x", tmp_path / "no-such-run" / "merged", "fp32", "x")
    spared = _fake_decoder(cache / "merged-onnx-fp32-y", tmp_path / "no-such-run" / "merged", "fp32", "y")
    unknown = cache / "notes-onnx-draft"
    unknown.mkdir()  # no manifest: not ours
    assert sorted(prune_stale_decoders(cache, keep=spared)) == sorted([changed, gone])
    assert kept.is_dir() and spared.is_dir() and unknown.is_dir()
    assert not changed.exists() and not gone.exists()


def test_bad_build_requests_are_one_line_errors(fp32: LocalGenerator, tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match=r"unknown ONNX decoder precision 'bf16'"):
        build_onnx_decoder(fp32.model_dir, "bf16", tmp_path)
    with pytest.raises(GeneratorError, match=r"cannot read .*config.json"):
        build_onnx_decoder(tmp_path, "int8", tmp_path)
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    with pytest.raises(GeneratorError, match=r"cannot create the model cache folder"):
        build_onnx_decoder(fp32.model_dir, "int8", a_file)


def test_a_model_the_builder_rejects_falls_back_to_transformers_unless_named(
        fp32: LocalGenerator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    """A transformers folder of an architecture onnxruntime-genai's builder does not know (a tiny GPT-2)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path / "tiny-gpt2"
    config = GPT2Config(vocab_size=len(fp32.tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    fp32.tokenizer.save_pretrained(folder)
    cache = tmp_path / "cache"
    fallback = LocalGenerator(folder, cache_dir=cache)
    assert fallback.decoder == "transformers" and fallback._decoder is None
    assert "answering with plain transformers instead" in capfd.readouterr().err
    assert isinstance(fallback.generate(PROMPTS[0], GenerationParams(max_new_tokens=3)), str)
    with pytest.raises(GeneratorError, match=r"cannot build the ONNX fp32 decoder of tiny-gpt2"):
        LocalGenerator(folder, cache_dir=cache, decoder="fp32")
    # RAG_DECODER names it too: the setting, passed down by rag.api.backend_options
    from rag.api import backend_options
    from rag.config import load_settings

    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "empty.toml"))
    monkeypatch.setenv("RAG_DECODER", "int8")
    monkeypatch.setenv("RAG_CACHE_DIR", str(cache))
    with pytest.raises(GeneratorError, match=r"cannot build the ONNX int8 decoder of tiny-gpt2"):
        LocalGenerator(folder, **backend_options(load_settings(), str(folder)))
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp folders left


# --------------------------------------------------------------------------- same answers as transformers


def test_fp32_decoder_writes_transformers_greedy_text(ref: LocalGenerator, fp32: LocalGenerator) -> None:
    for messages in PROMPTS:
        fp32._loaded.prompt_cache.clear()
        assert fp32.generate(messages, GREEDY) == ref.generate(messages, GREEDY)


def test_fp32_decoder_samples_like_transformers_with_a_seed(ref: LocalGenerator, fp32: LocalGenerator) -> None:
    params = GenerationParams(max_new_tokens=16, temperature=0.8, top_p=0.9, top_k=40, seed=7)
    assert fp32.generate(PROMPTS[1], params) == ref.generate(PROMPTS[1], params)


def test_left_padded_batches_match_single_runs_and_transformers(ref: LocalGenerator, fp32: LocalGenerator,
                                                                 int8: LocalGenerator) -> None:
    batch = fp32.generate_batch(PROMPTS, GREEDY, batch_size=3)
    assert batch == ref.generate_batch(PROMPTS, GREEDY, batch_size=3)
    assert batch == [fp32.generate(m, GREEDY) for m in PROMPTS]
    assert int8.generate_batch(PROMPTS, GREEDY, batch_size=3) == [int8.generate(m, GREEDY) for m in PROMPTS]


def test_int8_starts_like_transformers(ref: LocalGenerator, int8: LocalGenerator) -> None:
    """The first token comes from the fp32 prefill; the int8 decoder writes the rest."""
    one = GenerationParams(max_new_tokens=1)
    for messages in PROMPTS:
        assert int8.generate(messages, one) == ref.generate(messages, one)
        assert int8.generate(messages, GREEDY).strip()


def test_streaming_and_stop_strings(int8: LocalGenerator) -> None:
    params = GenerationParams(max_new_tokens=40, repetition_penalty=1.1)
    pieces = list(int8.stream(PROMPTS[1], params))
    whole = "".join(pieces)
    assert len(pieces) > 3 and whole == int8.generate(PROMPTS[1], params)
    stop = whole.split()[3]
    cut = int8.generate(PROMPTS[1], GenerationParams(max_new_tokens=40, repetition_penalty=1.1, stop=[stop]))
    assert stop not in cut and whole.startswith(cut)
    answers = int8.generate_batch(PROMPTS[1:], GenerationParams(max_new_tokens=40, stop=["."]))
    assert all("." not in a for a in answers)


def test_leaving_a_stream_early_frees_the_model(int8: LocalGenerator) -> None:
    stream = int8.stream(PROMPTS[1], GenerationParams(max_new_tokens=200))
    next(iter(stream))
    stream.close()
    assert not _live_generation_threads()
    assert int8._loaded.lock.acquire(timeout=5)
    int8._loaded.lock.release()


def test_a_cancelled_stream_ends_without_error(int8: LocalGenerator) -> None:
    stream = int8.stream(PROMPTS[1], GenerationParams(max_new_tokens=200))
    pieces = [next(iter(stream))]
    stream.cancel()
    pieces += list(stream)  # ends early, no exception
    assert len(pieces) < 60


def test_a_cancel_scope_stops_a_batch_between_decode_steps(int8: LocalGenerator,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`rag serve` cancels a grounded answer's batch through cancel_scope: the ONNX steps must check it."""
    event = threading.Event()
    session = int8._decoder.session
    real, steps = session.run_with_iobinding, []

    def counted(*args: object, **kwargs: object) -> object:
        steps.append(1)
        if len(steps) == 3:
            event.set()  # as a server thread would when the client hangs up
        return real(*args, **kwargs)

    monkeypatch.setattr(session, "run_with_iobinding", counted)
    with cancel_scope(event), pytest.raises(GenerationCancelled):
        int8.generate_batch(PROMPTS[1:], GenerationParams(max_new_tokens=200))  # both answer in > 10 tokens
    assert len(steps) == 3  # checked before the 4th step
    assert int8._loaded.lock.acquire(timeout=5)
    int8._loaded.lock.release()


# --------------------------------------------------------------------------- log-probabilities and the prompt cache


def _plain_logprobs(gen: LocalGenerator, messages: list, prefix: str, continuation: str) -> float:
    tok = gen.tokenizer
    prompt = tok(gen._prompt_text(messages, prefix), add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = gen._loaded.model(input_ids=torch.tensor([prompt + cont])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return float(logp.gather(-1, torch.tensor(cont)[:, None]).sum())


def test_logprobs_equal_a_plain_forward_pass_with_and_without_the_prompt_cache(int8: LocalGenerator) -> None:
    messages = [{"role": "user", "content": f"Passage: {PASSAGE}\nWhat does LoRA freeze?"}]
    prefix = "The answer is in this sentence: "
    conts = ["LoRA freezes all the weights of the pre-trained model.", "Only the adapter is stored."]
    int8._loaded.prompt_cache.clear()
    fresh = int8.continuation_logprobs(messages, prefix, conts)
    assert int8._loaded.prompt_cache.entries  # the prompt was kept
    reused_prefix = int8._loaded.prompt_cache.common_prefix(
        int8.tokenizer(int8._prompt_text(messages, prefix + "x"), add_special_tokens=False)["input_ids"])
    assert reused_prefix > 100
    again = int8.continuation_logprobs(messages, prefix, conts)  # read through the cache this time
    for (a, n), (b, m), cont in zip(fresh, again, conts):
        assert n == m
        assert a == pytest.approx(b, abs=1e-3)
        assert a == pytest.approx(_plain_logprobs(int8, messages, prefix, cont), abs=1e-3)


def test_an_answer_after_a_scored_prompt_reads_only_the_new_tokens(fp32: LocalGenerator) -> None:
    """The grounded-answer flow: score quotes, then answer after the chosen one (prompt cache reused)."""
    messages = [{"role": "user", "content": f"Passage: {PASSAGE}\nWhat does LoRA freeze?"}]
    prefix = "The answer is in this sentence: "
    quote = "LoRA freezes all the weights of the pre-trained model."
    fp32._loaded.prompt_cache.clear()
    cold = fp32.generate_batch([messages], GREEDY, prefixes=[prefix + quote + "\nShort answer:"])
    fp32._loaded.prompt_cache.clear()
    fp32.continuation_logprobs(messages, prefix, [quote])
    warm = fp32.generate_batch([messages], GREEDY, prefixes=[prefix + quote + "\nShort answer:"])
    assert warm == cold and warm[0].strip()


# --------------------------------------------------------------------------- a model merged by `raft train`


def test_a_merged_lora_model_gets_its_own_decoder(root: Path, fp32: LocalGenerator, tmp_path: Path) -> None:
    """`raft train` writes merge_and_unload() + save_pretrained into OUT/merged; the same here, without training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(fp32.model_dir, dtype=torch.float32, local_files_only=True)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    out = tmp_path / "run"
    lora.merge_and_unload().save_pretrained(out / "merged", safe_serialization=True)
    AutoTokenizer.from_pretrained(fp32.model_dir).save_pretrained(out / "merged")

    tuned = LocalGenerator(out, cache_dir=root, decoder="fp32", prefill_dtype="float32")
    plain = LocalGenerator(out, cache_dir=root, decoder="transformers", prefill_dtype="float32")
    assert tuned._decoder.onnx_dir != fp32._decoder.onnx_dir and tuned._decoder.onnx_dir.parent == root
    assert tuned.generate(PROMPTS[0], GREEDY) == plain.generate(PROMPTS[0], GREEDY)
    packed = json.loads((tuned._decoder.onnx_dir / "rag_decoder.json").read_text())["packed"]
    # the LoRA delta takes q_proj and v_proj (one fused qkv matrix per layer) off the 4-bit grid: those stay fp32
    assert packed["matrices"] - packed["packed"] == base.config.num_hidden_layers


# --------------------------------------------------------------------------- speculation and continuous batching


def _draft(root: Path, draft: str) -> LocalGenerator:
    return LocalGenerator(cache_dir=root, decoder="fp32", draft=draft, prefill_dtype="float32")


def test_prompt_lookup_proposes_what_followed_the_latest_match() -> None:
    from rag.generation.decoder.speculative import next_draft_length, prompt_lookup

    assert prompt_lookup([5, 6, 7, 8, 9, 1, 6, 7], max_tokens=2) == [8, 9]
    assert prompt_lookup([1, 2, 3, 9, 1, 2, 3, 7, 4, 1, 2, 3]) == [7, 4, 1, 2, 3]  # the latest occurrence
    assert prompt_lookup([1, 2, 3, 4]) == []  # no repeated bigram
    assert next_draft_length(5, 5, 5) == 7 and next_draft_length(5, 5, 2) == 4 and next_draft_length(2, 3, 0) == 2


def test_speculation_writes_the_same_greedy_text_with_fewer_passes(root: Path, ref: LocalGenerator) -> None:
    """Prompt lookup on a passage the answer copies, and the int8 draft model elsewhere (RAG_DRAFT=int8: not
    the default over a packed decoder): the fp32 model checks every proposed token, so the text is plain
    transformers' token for token."""
    off = _draft(root, "off")
    lookup = _draft(root, "lookup")
    fp32 = _draft(root, "int8")
    fp32._decoder._draft_opening.join()  # opened in the background
    assert fp32._decoder.engine.draft is not None
    copying = [{"role": "user", "content": f"Passage: {PASSAGE}\nWhat does LoRA freeze? Quote the passage."}]
    plain = GenerationParams(max_new_tokens=48)  # no repetition penalty: the answer copies the passage
    penalised = GenerationParams(max_new_tokens=48, repetition_penalty=1.1)
    for messages, params in [(copying, plain), *((m, penalised) for m in PROMPTS)]:
        expected = ref.generate(messages, params)
        for gen in (off, lookup, fp32):
            gen._decoder.engine.batch_sizes.clear()
            assert gen.generate(messages, params) == expected
        if messages is copying:
            assert lookup._decoder.engine.speculation["lookup_accepted"] > 10  # the copied sentence
    # the last prompt's passes: one token each without speculation, fewer with the draft model
    assert fp32._decoder.draft_dir is not None and lookup._decoder.draft_dir is None
    assert off._decoder.engine.speculation.total() == 0
    assert fp32._decoder.engine.speculation["draft_accepted"] > 0
    assert sum(fp32._decoder.engine.batch_sizes.values()) < sum(off._decoder.engine.batch_sizes.values())


def test_concurrent_answers_share_decode_passes_and_equal_single_runs(fp32: LocalGenerator) -> None:
    """What `rag serve` does with 3 clients: each stream's answer is its single-run answer, and the ONNX
    passes carried several sequences at once."""
    params = GenerationParams(max_new_tokens=32, repetition_penalty=1.1)
    alone = [fp32.generate(m, params) for m in PROMPTS]
    engine = fp32._decoder.engine
    engine.batch_sizes.clear()
    results: dict[int, str] = {}
    start = threading.Barrier(len(PROMPTS))

    def ask(i: int) -> None:
        start.wait()
        results[i] = "".join(fp32.stream(PROMPTS[i], params))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [results[i] for i in range(len(PROMPTS))] == alone
    assert fp32.parallel_requests and max(engine.batch_sizes) >= 2


def test_prompt_cache_keeps_several_prompts() -> None:
    """Two requests scoring and answering in turns each reuse their own prompt's cache."""
    from rag.generation.prefill import PromptCache

    cache = PromptCache(size=2)
    a, b, c = list(range(100)), list(range(1000, 1100)), list(range(2000, 2100))

    class Layer:
        def __init__(self, n: int) -> None:
            self.keys = self.values = torch.zeros(1, 1, n, 1)

    class Cache:
        def __init__(self, n: int) -> None:
            self.layers = [Layer(n)]

    cache.store(a, Cache(100))
    cache.store(b, Cache(100))
    assert cache.common_prefix(a + [7]) == 100 and cache.common_prefix(b + [7]) == 100
    cache.store(a + [7, 8], Cache(102))  # replaces a (its prefix), keeps b
    assert len(cache.entries) == 2 and cache.common_prefix(b + [1]) == 100
    cache.store(c, Cache(100))  # past size: the oldest (b) goes
    assert cache.common_prefix(b + [1]) == 0 and cache.common_prefix(a + [7, 8, 9]) == 102


@pytest.mark.parametrize("options", [[], ["shared_embeddings=true"]])
def test_builder_command_is_accepted_by_the_builder(options: list[str], monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """The builder's own argument parser takes the command, with and without extra options (a model with
    untied embeddings, as the teacher, has none; an empty `--extra_options` is refused)."""
    from onnxruntime_genai.models import builder

    from rag.generation.decoder.build import builder_command

    argv = builder_command(tmp_path / "model", tmp_path / "out", "fp32", options)
    monkeypatch.setattr("sys.argv", argv[2:])
    args = builder.get_args()
    assert args.precision == "fp32" and args.output == str(tmp_path / "out")
    assert (args.extra_options or []) == options
