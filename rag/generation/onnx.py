"""Faster local decoding: transformers reads the prompt, ONNX Runtime writes the answer's tokens.

Measured by `python bench/generation.py` (bundled SmolLM2-135M, a 1,407-token RAG prompt, 64 greedy
tokens, 1 thread, contenders in separate processes interleaved per round; README "Speed" has the table):
transformers `generate` decodes 14 tokens/s on this 2-core CPU (30 layers of tiny matrix-vector
products, each step paying per-operation overhead); llama.cpp (the same Q4_1 GGUF) decodes 2.7x faster
but pre-fills 3.3x slower. Here, with the prefill no slower than transformers': one fp32 ONNX step per
token decodes 1.5x faster (a step reads all 540 MB of fp32 weights: bound by memory bandwidth), and the
default - the same fp32 decoder checking tokens proposed by an int8 draft model and by prompt lookup
(speculative decoding, rag/generation/speculative.py) - 2.0x, with the same greedy text; int8 (2.3x)
and int4 (2.9x) decoders are faster still but change the text. An earlier session also tried OpenVINO, a
static KV cache with `torch.compile`, torch.ao dynamic int8 and bf16 weights and found them slower or
changing the greedy text; those runs are not part of bench/generation.py.

How: the prompt goes through the transformers model as before (same first token, cancellable within a
layer, prompt cache of rag/generation/prefill.py), each row's key/value cache is copied once into the
preallocated buffers of this decoder's DecodeEngine (rag/generation/engine.py), and every further pass is
one `InferenceSession` run of the decoder written by onnxruntime-genai's model builder, whose
GroupQueryAttention writes into those buffers in place (past and present share memory). The engine writes
concurrent answers in shared passes (continuous batching: what `rag serve` runs) and a lone greedy answer
speculatively. Token selection reuses transformers' own logits processors and stopping criteria, so
repetition penalty, sampling, seeds, stop strings, EOS handling and left-padded batches mean what they
mean in `model.generate`. Log-probabilities of continuations stay on the transformers model.

The decoder is built once per model folder and precision (a subprocess, progress on stderr: 6-8 s for
the bundled model in fp32, longer for bigger models or a busier CPU) into the model cache, written to a
temp folder and renamed into place (models.publish_cached); a `raft train` merged model is a transformers
folder like any other and gets its own cached decoders. The LM head is kept for every position (a
speculative pass needs them all; a one-token step computes one row either way). The fp32 decoder holds a
second copy of the weights (+540 MB on disk for the bundled model) and the int8 draft a third (+267 MB);
its bench worker resided ~0.8 GB more than the transformers one. `RAG_DRAFT=lookup` drops the draft,
`RAG_DECODER=transformers` both.

Precisions ($RAG_DECODER or LocalGenerator(decoder=...)): "fp32", the default, writes transformers'
greedy text token for token (tests/rag/generation/test_onnx.py; every dev answer identical in the bench);
"int8" and "int4" quantise the decoder's weights (blocks of 32, int8 activations): faster, but the greedy
text drifts after the first token (1 and 0 of 6 dev answers identical, lower token F1 against the
reference answers), so they are opt-in. "transformers" is plain `model.generate` (no build, no second
copy of the weights, one answer at a time).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rag.common.atomic import write_json_atomic
from rag.errors import GeneratorError
from rag.generation.engine import DecodeEngine, DecodeSequence
from rag.generation.models import LoadedModel, default_cache_dir, publish_cached
from rag.generation.prefill import output_cache, read_prompt

#: Decoders a LocalGenerator can use: an ONNX precision, or "transformers" (plain `model.generate`).
DECODERS = ("int4", "int8", "fp32", "transformers")
#: What "auto" means when $RAG_DECODER is unset: the fastest decoder whose greedy text equals transformers'
#: (bench/generation.py, README "Speed").
DEFAULT_DECODER = "fp32"
DECODER_ENV = "RAG_DECODER"
#: Proposers of speculative decoding (rag/generation/speculative.py), and the default under "auto".
DRAFTS = ("int8", "int4", "lookup", "off")
DEFAULT_DRAFT = "int8"
DRAFT_ENV = "RAG_DRAFT"
#: Let ONNX Runtime's idle threads spin-wait for the next operation (its default). Off: with 4 answers at
#: once, spinning decode threads took the cores from the prompt being read beside them (in-process, 8 free
#: answers at concurrency 4: 0.29 answers/s spinning, 0.34 not; 0.33 either way one at a time).
ORT_SPIN = False
_MANIFEST = "rag_decoder.json"
_FORMAT = 2  # bump when the builder options below change (2: logits of every position, for speculation)
_BUILD_TIMEOUT_S = 1800


def resolve_decoder(name: str | None = "auto") -> str:
    """The decoder a LocalGenerator uses: `name`, or for "auto"/None $RAG_DECODER, else DEFAULT_DECODER.

    :param name: "auto", None, or one of DECODERS.
    :returns: one of DECODERS.
    :raises GeneratorError: naming the value (and $RAG_DECODER when it came from there) and the choices.
    """
    return _choose(name, "decoder", DECODER_ENV, DEFAULT_DECODER, DECODERS)


def _choose(name: str | None, what: str, env_name: str, default: str, choices: tuple[str, ...]) -> str:
    """`name`, or for "auto"/None the environment variable `env_name`, else `default`; checked against `choices`.

    :raises GeneratorError: naming the value, where it came from (`what` or `env_name`) and the choices.
    """
    source = what
    if name in (None, "auto"):
        env = os.environ.get(env_name, "").strip().lower()
        name, source = (env, env_name) if env and env != "auto" else (default, "default")
    if name not in choices:
        raise GeneratorError(f"unknown {source} {name!r}: choose auto, {', '.join(choices)}")
    return name


def _source_fingerprint(model_dir: Path) -> str:
    """Sizes and modification times of the folder's weights and config (what the builder reads)."""
    import onnxruntime_genai

    digest = hashlib.sha256(f"{_FORMAT}:{onnxruntime_genai.__version__};".encode())
    for f in sorted(p for p in model_dir.glob("*") if p.is_file() and p.suffix in (".safetensors", ".json")):
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


def _decoder_validator(fingerprint: str, precision: str) -> Callable[[Path], bool]:
    """True for a complete decoder folder of this source and precision (manifest, model, weights' size)."""

    def valid(folder: Path) -> bool:
        try:
            manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            isinstance(manifest, dict)
            and manifest.get("source") == fingerprint
            and manifest.get("precision") == precision
            and (folder / "model.onnx").is_file()
            and (folder / "model.onnx.data").is_file()
            and (folder / "model.onnx.data").stat().st_size == manifest.get("data_bytes")
        )

    return valid


def _run_builder(cmd: list[str], label: str, layers: int) -> None:
    """Run onnxruntime-genai's builder, saying on stderr what is happening (6 s for the bundled model).

    :raises GeneratorError: when it fails (its last lines) or runs longer than _BUILD_TIMEOUT_S.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.monotonic()
    print(f"rag: building {label} once (seconds to a minute; cached for every later run; "
          f"{DECODER_ENV}=transformers skips it)", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    timer = threading.Timer(_BUILD_TIMEOUT_S, proc.kill)
    timer.start()
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-2:], line.strip()]
            if line.startswith("Reading layer "):
                done = int(line.split()[-1]) + 1
                if done in {max(1, layers // 4), layers // 2, 3 * layers // 4}:
                    print(f"rag: ... read {done}/{layers} layers ({time.monotonic() - started:.0f} s)",
                          file=sys.stderr, flush=True)
            elif line.startswith("Saving ONNX model"):
                print("rag: ... writing the decoder", file=sys.stderr, flush=True)
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    if elapsed >= _BUILD_TIMEOUT_S:
        raise GeneratorError(f"building {label} took over {_BUILD_TIMEOUT_S} s; "
                             f"set {DECODER_ENV}=transformers to skip it")
    if code != 0:
        raise GeneratorError(f"cannot build {label}: {' | '.join(tail)}; set {DECODER_ENV}=transformers "
                             "to use plain transformers")
    print(f"rag: built {label} in {elapsed:.0f} s", file=sys.stderr, flush=True)


_build_lock = threading.Lock()


def prune_stale_decoders(root: Path, keep: Path | None = None) -> list[Path]:
    """Delete the decoders in `root` nothing can use again: their source folder is gone (a test's or a
    deleted run's model), or it changed since (`raft train` wrote a new merged/ there), keeping `keep`.

    Why: each decoder is a second copy of a model's weights (519 MB for the bundled model in fp32), and
    model folders come and go; `build_onnx_decoder` calls this after every build.

    :param root: a model cache folder.
    :param keep: a decoder folder never deleted (the one just built).
    :returns: the folders deleted.
    """
    newest: dict[tuple[str, str], str] = {}
    found: list[tuple[Path, str, str, str]] = []
    for folder in root.glob("*-onnx-*"):
        try:
            manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
            source, precision, fingerprint = Path(manifest["model_dir"]), manifest["precision"], manifest["source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or still being written by another process
        if folder.name.startswith(".") or folder == keep:
            continue
        if not source.is_dir():
            found.append((folder, "", "", ""))
            continue
        key = (str(source), precision)
        if key not in newest:
            try:
                newest[key] = _source_fingerprint(source)
            except OSError:
                newest[key] = ""
        found.append((folder, key[0], key[1], fingerprint))
    removed = []
    for folder, source, precision, fingerprint in found:
        if not source or newest.get((source, precision)) != fingerprint:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def build_onnx_decoder(model_dir: str | Path, precision: str = "fp32",
                       cache_dir: str | Path | None = None) -> Path:
    """Return the ONNX decoder of a transformers model folder, building it once and reusing it.

    Runs onnxruntime-genai's model builder (`python -m onnxruntime_genai.models.builder`, CPU target, the
    LM head pruned to the last position, embeddings shared with the head when the model ties them) in a
    subprocess, reporting progress on stderr, into a temp folder renamed into place
    (models.publish_cached), so an interrupted build never leaves a half cache and none is built twice;
    then deletes the decoders in the same cache whose model folder is gone or changed (prune_stale_decoders).

    :param model_dir: a folder with config.json and safetensors weights (the GGUF cache, a merged model).
    :param precision: "int4", "int8" or "fp32" (weights of the ONNX decoder).
    :param cache_dir: the model cache root (default: $RAG_CACHE_DIR or ~/.cache/course-rag/models).
    :returns: the folder holding model.onnx and model.onnx.data.
    :raises GeneratorError: for an unknown precision, a folder the builder rejects, or a failed build.
    """
    if precision not in DECODERS or precision == "transformers":
        raise GeneratorError(f"unknown ONNX decoder precision {precision!r}: choose int4, int8 or fp32")
    model_dir = Path(model_dir).resolve()
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GeneratorError(f"cannot read {model_dir / 'config.json'}: {e}") from e
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    fingerprint = _source_fingerprint(model_dir)
    label = f"the ONNX {precision} decoder of {model_dir.name}"
    # the LM head is not pruned: a speculative pass needs the logits of every position it feeds
    options = ["shared_embeddings=true"] if config.get("tie_word_embeddings") else []

    def write(tmp: Path) -> None:
        _run_builder([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o",
                      str(tmp), "-p", precision, "-e", "cpu", "-c", str(tmp / ".hf-cache"), "--extra_options",
                      *options], label, int(config.get("num_hidden_layers", 0)))
        shutil.rmtree(tmp / ".hf-cache", ignore_errors=True)
        data = tmp / "model.onnx.data"
        if not (tmp / "model.onnx").is_file() or not data.is_file():
            raise GeneratorError(f"building {label} produced no model.onnx(.data) in {tmp}")
        manifest = {"source": fingerprint, "precision": precision, "model_dir": str(model_dir),
                    "data_bytes": data.stat().st_size, "builder_options": options}
        write_json_atomic(tmp / _MANIFEST, manifest)

    target = root / f"{model_dir.name}-onnx-{precision}-{fingerprint}"
    valid = _decoder_validator(fingerprint, precision)
    if valid(target):
        return target
    publish_cached(target, valid, write, _build_lock, f"cannot build {label}")
    prune_stale_decoders(root, keep=target)
    return target


class OnnxDecoder:
    """`generate()` like transformers' `model.generate`: the transformers model pre-fills, ONNX Runtime decodes.

    One instance per (model folder, dtype, precision, threads, draft); `generate` may be called from several
    threads at once: the prompts are read one at a time inside the caller's `reading()`, the answers are
    written together by one DecodeEngine.
    """

    def __init__(self, loaded: LoadedModel, onnx_dir: Path, threads: int, draft_dir: Path | None = None,
                 speculate: bool = True) -> None:
        """Open the ONNX decoder of `loaded`'s model (and its draft model).

        :param loaded: the transformers model and tokenizer (they pre-fill and keep scoring continuations).
        :param onnx_dir: a folder from `build_onnx_decoder` for the same model.
        :param threads: ONNX Runtime intra-op threads (LocalGenerator passes torch's thread count).
        :param draft_dir: a cheaper decoder of the same model proposing tokens for speculative decoding
            (rag/generation/speculative.py), or None (prompt lookup only).
        :param speculate: False = one token per pass, never speculating (RAG_DRAFT=off).
        :raises GeneratorError: when an ONNX model cannot be opened or does not match the model's shape.
        """
        import onnxruntime as ort

        self.loaded = loaded
        self.onnx_dir = onnx_dir
        config = loaded.model.config
        self.layers = int(config.num_hidden_layers)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        if not ORT_SPIN:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_dir / "model.onnx"), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            raise GeneratorError(f"cannot open the ONNX decoder {onnx_dir}: {type(e).__name__}: {e}; delete the "
                                 "folder to rebuild it") from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        past = inputs.get("past_key_values.0.key")
        if (past is None or "input_ids" not in inputs or "attention_mask" not in inputs
                or f"past_key_values.{self.layers - 1}.value" not in inputs or past.shape[1] != self.kv_heads):
            raise GeneratorError(f"the ONNX decoder {onnx_dir} does not match {config.model_type} with {self.layers} "
                                 f"layers and {self.kv_heads} key/value heads; delete the folder to rebuild it")
        self.vocab = int(self.session.get_outputs()[0].shape[-1])
        self.draft_dir = draft_dir
        self.engine = DecodeEngine(self.session, self.layers, self.kv_heads, self.head_dim, self.vocab, None,
                                   speculate)
        if draft_dir is not None:
            # Opened in the background (~1 s): the first answer needs the prompt read first, and the engine
            # uses prompt lookup alone until the draft is there.
            def open_draft() -> None:
                try:
                    self.engine.draft = ort.InferenceSession(str(draft_dir / "model.onnx"), options,
                                                             providers=["CPUExecutionProvider"])
                except Exception as e:  # noqa: BLE001 - decoding goes on without the draft model, said once
                    print(f"rag: cannot open the ONNX draft decoder {draft_dir} ({type(e).__name__}: {e}); "
                          "delete the folder to rebuild it; decoding without it", file=sys.stderr, flush=True)

            # not a daemon: an ONNX Runtime session still being created when the interpreter exits aborts it
            self._draft_opening = threading.Thread(target=open_draft, name="rag-open-draft")
            self._draft_opening.start()

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        pad_token_id: int | None = None,
        do_sample: bool = False,
        repetition_penalty: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        streamer: Any = None,
        stopping_criteria: Any = None,
        stop_strings: list[str] | None = None,
        tokenizer: Any = None,
        interrupt: Callable[[], None] | None = None,
        reading: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> Any:
        """Continue left-padded prompts, with `model.generate`'s meaning for every argument it takes.

        The prompts are read by the transformers model (inside `reading()`), then every row becomes a
        DecodeSequence of this decoder's DecodeEngine (rag/generation/engine.py), which writes it together
        with whatever other answers are being written at the time.

        :param input_ids: LongTensor [batch, prompt_len], left-padded.
        :param attention_mask: LongTensor [batch, prompt_len], 0 on padding (None = no padding).
        :param max_new_tokens: tokens to add at most (the caller keeps prompt + this within the context).
        :param min_new_tokens: EOS is masked out until this many tokens were added (bench/generation.py).
        :param pad_token_id: written after a sequence has finished (EOS or a stop criterion).
        :param do_sample: sample (with temperature / top_k / top_p) instead of greedy argmax.
        :param repetition_penalty: transformers' RepetitionPenaltyLogitsProcessor (1.0 = off), over the
            row's own prompt and answer tokens (not its padding).
        :param streamer: a transformers streamer (batch 1): gets the prompt, then each new token, then `end()`.
        :param stopping_criteria: extra StoppingCriteria (called with a row's ids and scores after every token).
        :param stop_strings: end a sequence when its text ends with one of these (needs `tokenizer`).
        :param interrupt: called before every decode pass a row takes part in; raises to abandon the
            generation (the prefill is interrupted by the caller's layer hooks inside `reading()`).
        :param reading: a context manager factory held while the transformers model reads the prompts
            (LocalGenerator: the model's lock and its cancellation hooks); None = nothing.
        :returns: LongTensor [batch, prompt_len + new_tokens]: prompt, answer, pad after the end.
        :raises: whatever `interrupt` or `reading()` raise when cancelled.
        """
        import torch
        from transformers import (
            LogitsProcessorList,
            MinNewTokensLengthLogitsProcessor,
            RepetitionPenaltyLogitsProcessor,
            StoppingCriteriaList,
            StopStringCriteria,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        model = self.loaded.model
        batch, width = input_ids.shape
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        lengths = mask.sum(dim=1).tolist()
        with reading() if reading is not None else contextlib.nullcontext(), torch.inference_mode():
            if batch == 1 and bool(mask.all()):  # one prompt: reuse the last prompt's cache where it matches
                out = read_prompt(model, self.loaded.prompt_cache, input_ids)
            else:  # the same position ids `model.generate` gives a left-padded prompt
                positions = (mask.long().cumsum(-1) - 1).masked_fill_(mask == 0, 1)
                out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            logits_to_keep=1)
            scores = out.logits[:, -1, :].to(dtype=torch.float32, copy=True)
            cache = output_cache(out)
            # each row's real tokens: views of this output's own cache (the prompt cache keeps a clone),
            # copied once, into the engine's buffer
            kvs = [[(cache.layers[layer].keys[row, :, width - n:].to(torch.float32),
                     cache.layers[layer].values[row, :, width - n:].to(torch.float32))
                    for layer in range(self.layers)] for row, n in enumerate(lengths)]
            del out, cache

        eos = model.generation_config.eos_token_id
        eos_ids = {*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                   *([self.loaded.tokenizer.eos_token_id] if self.loaded.tokenizer.eos_token_id is not None else [])}
        eos_tensor = torch.tensor(sorted(eos_ids), dtype=torch.long)
        pad = pad_token_id if pad_token_id is not None else min(eos_ids) if eos_ids else 0
        sequences = []
        for row, n in enumerate(lengths):
            processors = LogitsProcessorList()
            if min_new_tokens:
                processors.append(MinNewTokensLengthLogitsProcessor(int(n), min_new_tokens, eos_tensor))
            if repetition_penalty != 1.0:
                processors.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
            if do_sample:
                if temperature != 1.0:
                    processors.append(TemperatureLogitsWarper(temperature))
                if top_k:
                    processors.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
                if top_p < 1.0:
                    processors.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
            criteria = StoppingCriteriaList(list(stopping_criteria or []))
            if stop_strings:
                criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings)))
            on_token = (lambda token: streamer.put(torch.tensor([token]))) if streamer is not None and batch == 1 else None
            sequences.append(DecodeSequence(input_ids[row, width - n:].tolist(), kvs[row], scores[row], processors,
                                            criteria, eos_ids, max_new_tokens, do_sample, on_token, interrupt))
        del kvs
        if streamer is not None:
            streamer.put(input_ids.cpu())
        try:
            self.engine.run(sequences)
        finally:
            if streamer is not None:
                streamer.end()
        new = max(len(s.new_tokens) for s in sequences)
        result = torch.full((batch, width + new), pad, dtype=torch.long)
        result[:, :width] = input_ids
        for row, seq in enumerate(sequences):
            result[row, width:width + len(seq.new_tokens)] = torch.tensor(seq.new_tokens, dtype=torch.long)
        return result


def resolve_draft(name: str | None, precision: str) -> str:
    """The proposer of speculative decoding: `name`, or for "auto"/None $RAG_DRAFT, else DEFAULT_DRAFT.

    :param name: "auto", None, or one of DRAFTS: "int8"/"int4" (a draft model with those weights, then
        prompt lookup first), "lookup" (prompt lookup only), "off" (one token per pass).
    :param precision: the decoder's precision; a draft model is used only under the fp32 decoder (a
        quantised decoder is as cheap as its draft would be: it gets prompt lookup).
    :returns: one of DRAFTS.
    :raises GeneratorError: naming the value, where it came from and the choices.
    """
    name = _choose(name, "draft", DRAFT_ENV, DEFAULT_DRAFT, DRAFTS)
    if name in ("int8", "int4") and precision != "fp32":
        return "lookup"
    return name


@functools.lru_cache(maxsize=4)
def _open_decoder(model_dir: str, dtype: str, precision: str, cache_dir: str | None, threads: int,
                  draft: str) -> OnnxDecoder:
    from rag.generation.models import load_local_model

    onnx_dir = build_onnx_decoder(model_dir, precision, cache_dir)
    draft_dir = build_onnx_decoder(model_dir, draft, cache_dir) if draft in ("int8", "int4") else None
    return OnnxDecoder(load_local_model(model_dir, dtype), onnx_dir, threads, draft_dir, speculate=draft != "off")


def load_onnx_decoder(model_dir: str | Path, dtype: str, precision: str, cache_dir: str | Path | None = None,
                      threads: int | None = None, draft: str | None = "auto") -> OnnxDecoder:
    """The ONNX decoder of a loaded transformers model, built on first use and opened once per process.

    :param model_dir: the transformers model folder `load_local_model` loaded.
    :param dtype: its dtype ("float32" or "bfloat16"; the prefill's cache is copied as float32).
    :param precision: "int4", "int8" or "fp32".
    :param cache_dir: the model cache root (default: $RAG_CACHE_DIR or ~/.cache/course-rag/models).
    :param threads: ONNX Runtime threads (default: torch's current thread count).
    :param draft: speculative decoding's proposer (resolve_draft): "auto", "int8", "int4", "lookup", "off".
    :returns: an OnnxDecoder sharing the process-wide LoadedModel.
    :raises GeneratorError: when the decoder cannot be built or opened, or for an unknown draft.
    """
    draft = resolve_draft(draft, precision)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return _open_decoder(str(Path(model_dir).resolve()), dtype, precision,
                         None if cache_dir is None else str(cache_dir), int(threads), draft)
