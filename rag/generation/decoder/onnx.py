"""Faster local decoding: transformers reads the prompt, ONNX Runtime writes the answer's tokens.

Measured by `python -m bench.generation` (bundled SmolLM2-135M, a 1,407-token RAG prompt, 64 greedy
tokens, 1 thread, contenders in separate processes interleaved per round; docs/results/generation.md has the table):
transformers `generate` pays per-operation overhead on 30 layers of tiny matrix-vector products. Against
it, one fp32 ONNX step per token decodes 2.0x faster, bound by reading 540 MB of weights per step; the same
weights stored as the exact 4-bit blocks they came from (rag/generation/decoder/packing.py, the default) 2.8x, with
the same greedy text. Speculating (rag/generation/decoder/speculative.py) took the plain fp32 decoder to 2.4x but
slows the packed one (1.9-2.0x): its passes of several tokens cost 2.5-4x a one-token pass. int8 (2.5x) and
int4 (3.8x) decoders change the text; llama.cpp on the Q4_1 GGUF decodes 4.2x faster but pre-fills 2.1x
slower. OpenVINO, a static KV cache with `torch.compile`, torch.ao dynamic int8 and bf16 weights were
slower or changed the greedy text (an earlier session; not part of bench/generation.py).

How: the prompt goes through the transformers model as before (same first token, cancellable within a
layer, prompt cache of rag/generation/prefill.py), each row's key/value cache is copied once into the
preallocated buffers of this decoder's DecodeEngine (rag/generation/decoder/engine.py), and every further pass is
one `InferenceSession` run of the decoder written by onnxruntime-genai's model builder, whose
GroupQueryAttention writes into those buffers in place. The engine writes concurrent answers in shared
passes (continuous batching: what `rag serve` runs). Token selection reuses transformers' own logits
processors and stopping criteria, so repetition penalty, sampling, seeds, stop strings, EOS handling and
left-padded batches mean what they mean in `model.generate`. Log-probabilities stay on the transformers model.

The decoder is built once per model folder and precision (a subprocess, progress on stderr, packing
included) into the model cache, via a temp folder renamed into place
(models.publish_cached); a `raft train` merged model gets its own. The LM head is kept for every position
(a speculative pass needs them all). The packed fp32 decoder of the bundled model holds 195 MB (the fp32
embedding table is most of it), 540 MB unpacked. A model merged with a LoRA on every projection (the
shipped course adapter, `bundled-raft`, what `rag ask` runs on that course) has nothing left to pack: its
decoder is the unpacked one with the int8 draft (2.4x).

Precisions (the setting `decoder`, RAG_DECODER, passed as LocalGenerator(decoder=...)): "packed-a8", the default,
multiplies the packed decoder's exact 4-bit blocks against int8 activations (as llama.cpp runs the GGUF): the
text differs from transformers' after a few tokens, and the answers were no worse than fp32's on the independent
courses' quizzes beyond the paired 95% interval (bench/generation_quality.py), which is what the default is held
to. "fp32" writes transformers' greedy text token for token (tests/rag/generation/decoder/test_onnx.py);
"int8" and "int4" quantise the weights anew (blocks of 32, int8 activations) and drift more: opt-in.
"transformers" is plain `model.generate` (no build, no second copy of the weights, one answer at a time).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rag.errors import GeneratorError
from rag.generation.decoder.engine import DecodeEngine, DecodeSequence
from rag.generation.models import LoadedModel
from rag.generation.decoder.build import build_onnx_decoder, is_packed
from rag.generation.prefill import output_cache, read_prompt

#: Decoders a LocalGenerator can use: an ONNX precision, or "transformers" (plain `model.generate`).
DECODERS = ("int4", "int8", "fp32", "packed-a8", "transformers")
#: What decoder "auto" means: the fastest decoder whose answers are no worse than the fp32 decoder's on the
#: independent courses' quizzes beyond the paired 95% interval (bench/generation_quality.py; identical text is
#: not asked for): the exact 4-bit blocks against 8-bit activations, as llama.cpp runs the same GGUF
#: (docs/results/generation.md). A model with nothing packed (a LoRA merged on every projection) gets fp32.
DEFAULT_DECODER = "packed-a8"
#: Proposers of speculative decoding (rag/generation/decoder/speculative.py), and the default under "auto": none for
#: a decoder of packed 4-bit blocks (its passes of several tokens cost 2.5-4x a
#: one-token pass: speculating made it slower, 1.96x against 2.81x transformers' decode), else the int8 draft.
DRAFTS = ("int8", "int4", "lookup", "off")
DEFAULT_DRAFT = "int8"
DEFAULT_DRAFT_PACKED = "off"
#: Let ONNX Runtime's idle threads spin-wait for the next operation (its default). Off: with 4 answers at
#: once, spinning decode threads took the cores from the prompt being read beside them (in-process, 8 free
#: answers at concurrency 4: 0.29 answers/s spinning, 0.34 not; 0.33 either way one at a time).
ORT_SPIN = False


def resolve_decoder(name: str | None = "auto") -> str:
    """The decoder a LocalGenerator uses: `name` (the setting `decoder`), or DEFAULT_DECODER for "auto"/None.

    :param name: "auto", None, or one of DECODERS.
    :returns: one of DECODERS.
    :raises GeneratorError: naming the value and the choices.
    """
    return _choose(name, "decoder", DEFAULT_DECODER, DECODERS)


def _choose(name: str | None, what: str, default: str, choices: tuple[str, ...]) -> str:
    """`name`, or `default` for "auto"/None; checked against `choices`.

    :raises GeneratorError: naming the value, the setting `what` and the choices.
    """
    if name in (None, "auto"):
        name = default
    if name not in choices:
        raise GeneratorError(f"unknown {what} {name!r}: choose auto, {', '.join(choices)}")
    return name


class OnnxDecoder:
    """`generate()` like transformers' `model.generate`: the transformers model pre-fills, ONNX Runtime decodes.

    One instance per (model folder, precision, threads, draft); `generate` may be called from several
    threads at once: the prompts are read one at a time inside the caller's `reading()`, the answers are
    written together by one DecodeEngine.

    It keeps no transformers model: `generate` gets the caller's, the one its lock and cancel hooks guard
    (a kept one outlived `load_local_model`'s cache: a later LocalGenerator hooked its new copy, not the
    copy reading its prompts).
    """

    def __init__(self, config: Any, onnx_dir: Path, threads: int, draft_dir: Path | None = None,
                 speculate: bool = True) -> None:
        """Open the ONNX decoder of a model (and its draft model).

        :param config: the transformers model's config (layers, key/value heads, head size are checked
            against the ONNX model's inputs).
        :param onnx_dir: a folder from `build_onnx_decoder` for the same model.
        :param threads: ONNX Runtime intra-op threads (LocalGenerator passes torch's thread count).
        :param draft_dir: a cheaper decoder of the same model proposing tokens for speculative decoding
            (rag/generation/decoder/speculative.py), or None (prompt lookup only).
        :param speculate: False = one token per pass, never speculating (draft "off").
        :raises GeneratorError: when an ONNX model cannot be opened or does not match the model's shape.
        """
        import onnxruntime as ort

        self.onnx_dir = onnx_dir
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
            # Opened in the background: the first answer needs the prompt read first, and the engine
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
        loaded: LoadedModel,
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

        `loaded`'s model reads the prompts inside `reading()`; every row then becomes a DecodeSequence of
        this decoder's DecodeEngine (rag/generation/decoder/engine.py), written together with any other answers.

        :param input_ids: LongTensor [batch, prompt_len], left-padded.
        :param attention_mask: LongTensor [batch, prompt_len], 0 on padding (None = no padding).
        :param loaded: the caller's model of this decoder's folder (its lock: `reading()`), tokenizer, prompt cache.
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

        batch, width = input_ids.shape
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        lengths = mask.sum(dim=1).tolist()
        scores, kvs = self._prefill(loaded, input_ids, mask, lengths, reading)
        eos_ids = eos_token_ids(loaded)
        pad = pad_token_id if pad_token_id is not None else min(eos_ids) if eos_ids else 0
        on_token = (lambda token: streamer.put(torch.tensor([token]))) if streamer is not None and batch == 1 else None
        sequences = [DecodeSequence(input_ids[row, width - n:].tolist(), kvs[row], scores[row],
                                    logits_processors(int(n), eos_ids, min_new_tokens, repetition_penalty, do_sample,
                                                      temperature, top_k, top_p),
                                    stopping(stopping_criteria, stop_strings, tokenizer), eos_ids, max_new_tokens,
                                    do_sample, on_token, interrupt)
                     for row, n in enumerate(lengths)]
        del kvs
        if streamer is not None:
            streamer.put(input_ids.cpu())
        try:
            self.engine.run(sequences)
        finally:
            if streamer is not None:
                streamer.end()
        return answers_tensor(input_ids, sequences, pad)

    def _prefill(self, loaded: LoadedModel, input_ids: Any, mask: Any, lengths: list[int],
                 reading: Callable[[], AbstractContextManager[Any]] | None) -> tuple[Any, list[list[tuple[Any, Any]]]]:
        """Read the prompts through the transformers model, inside `reading()`.

        :param input_ids: LongTensor [batch, prompt_len], left-padded; `mask` its attention mask.
        :param lengths: each row's real (unpadded) token count.
        :returns: (scores, kvs): fp32 logits of each row's next token [batch, vocab], and per row, per layer,
            the (keys, values) of its real tokens, fp32 [kv_heads, length, head_dim].
        """
        import torch

        model, width = loaded.model, input_ids.shape[1]
        with reading() if reading is not None else contextlib.nullcontext(), torch.inference_mode(), loaded.reading():
            if input_ids.shape[0] == 1 and bool(mask.all()):  # one prompt: reuse the last prompt's cache where it fits
                out = read_prompt(model, loaded.prompt_cache, input_ids)
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
        return scores, kvs


def eos_token_ids(loaded: LoadedModel) -> set[int]:
    """The tokens that end an answer: the model's generation config's EOS ids and the tokenizer's EOS."""
    eos = loaded.model.generation_config.eos_token_id
    return {*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
            *([loaded.tokenizer.eos_token_id] if loaded.tokenizer.eos_token_id is not None else [])}


def logits_processors(prompt_len: int, eos_ids: set[int], min_new_tokens: int, repetition_penalty: float,
                      do_sample: bool, temperature: float, top_k: int, top_p: float) -> Any:
    """One row's transformers LogitsProcessorList, built as `model.generate` builds it for these arguments.

    :param prompt_len: the row's real prompt tokens (MinNewTokensLengthLogitsProcessor counts from there).
    :returns: the processors in `model.generate`'s order: min new tokens, repetition penalty, then (when
        sampling) temperature, top-k, top-p; an empty list for plain greedy decoding.
    """
    import torch
    from transformers import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if min_new_tokens:
        eos_tensor = torch.tensor(sorted(eos_ids), dtype=torch.long)
        processors.append(MinNewTokensLengthLogitsProcessor(prompt_len, min_new_tokens, eos_tensor))
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
    if do_sample:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return processors


def stopping(stopping_criteria: Any, stop_strings: list[str] | None, tokenizer: Any) -> Any:
    """One row's StoppingCriteriaList: the caller's criteria, then its stop strings (StopStringCriteria)."""
    from transformers import StoppingCriteriaList, StopStringCriteria

    criteria = StoppingCriteriaList(list(stopping_criteria or []))
    if stop_strings:
        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings)))
    return criteria


def answers_tensor(input_ids: Any, sequences: list[DecodeSequence], pad: int) -> Any:
    """`model.generate`'s output: LongTensor [batch, prompt_len + longest answer], each row its prompt, its
    answer's tokens, then `pad`."""
    import torch

    batch, width = input_ids.shape
    new = max(len(s.new_tokens) for s in sequences)
    result = torch.full((batch, width + new), pad, dtype=torch.long)
    result[:, :width] = input_ids
    for row, seq in enumerate(sequences):
        result[row, width:width + len(seq.new_tokens)] = torch.tensor(seq.new_tokens, dtype=torch.long)
    return result


def resolve_draft(name: str | None, precision: str, packed: bool = False) -> str:
    """The proposer of speculative decoding: `name` (the setting `draft`), or for "auto"/None the default
    (DEFAULT_DRAFT_PACKED for a packed decoder, else DEFAULT_DRAFT).

    :param name: "auto", None, or one of DRAFTS: "int8"/"int4" (a draft model with those weights, then
        prompt lookup first), "lookup" (prompt lookup only), "off" (one token per pass).
    :param precision: the decoder's precision; a draft model is used only under the fp32 decoder (a
        quantised decoder is as cheap as its draft would be: it gets prompt lookup).
    :param packed: the decoder holds packed 4-bit matrices (`is_packed`).
    :returns: one of DRAFTS.
    :raises GeneratorError: naming the value and the choices.
    """
    name = _choose(name, "draft", DEFAULT_DRAFT_PACKED if packed else DEFAULT_DRAFT, DRAFTS)
    if name in ("int8", "int4") and precision != "fp32":
        return "lookup"
    return name


@functools.lru_cache(maxsize=4)
def _open_decoder(model_dir: str, onnx_dir: str, cache_dir: str | None, threads: int, draft: str) -> OnnxDecoder:
    from transformers import AutoConfig

    draft_dir = build_onnx_decoder(model_dir, draft, cache_dir) if draft in ("int8", "int4") else None
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    return OnnxDecoder(config, Path(onnx_dir), threads, draft_dir, speculate=draft != "off")


def release_decoders() -> None:
    """Forget the decoders opened so far (a LocalGenerator still holding one keeps it open)."""
    _open_decoder.cache_clear()


def load_onnx_decoder(model_dir: str | Path, precision: str, cache_dir: str | Path | None = None,
                      threads: int | None = None, draft: str | None = "auto") -> OnnxDecoder:
    """The ONNX decoder of a transformers model folder, built on first use and opened once per process.

    :param model_dir: the transformers model folder (its `generate` calls bring the loaded model).
    :param precision: "int4", "int8", "fp32" or "packed-a8" (build.PRECISIONS).
    :param cache_dir: the model cache root (default: models.default_cache_dir(); callers pass the setting cache_dir).
    :param threads: ONNX Runtime threads (default: torch's current thread count).
    :param draft: speculative decoding's proposer (resolve_draft): "auto", "int8", "int4", "lookup", "off".
    :returns: the OnnxDecoder of (folder, precision, threads, draft), shared in the process.
    :raises GeneratorError: when the decoder cannot be built or opened, or for an unknown draft.
    """
    onnx_dir = build_onnx_decoder(model_dir, precision, cache_dir)
    packed = is_packed(onnx_dir)
    # "packed-a8" of a model with nothing packed (a LoRA merged on every projection) is its fp32 decoder
    draft = resolve_draft(draft, "fp32" if precision == "packed-a8" and not packed else precision, packed)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return _open_decoder(str(Path(model_dir).resolve()), str(onnx_dir), None if cache_dir is None else str(cache_dir),
                         int(threads), draft)
