"""The in-process backend (CPU): streaming, left-padded batches, continuation log-probabilities, cancellation.

A transformers model always reads the prompt and scores continuations; the tokens of an answer come from
`model.generate` or, with `decoder` "packed-a8"/"fp32"/"int8"/"int4" (the setting `decoder`), from the ONNX Runtime decoder of
rag/generation/decoder/onnx.py, a drop-in `generate` with the same arguments (docs/results/generation.md compares them). With
the ONNX decoder the model's lock (models.ModelLock) is held only while the prompt is read: answers
requested from several threads at once are written together (rag/generation/decoder/engine.py), so the instance
declares `parallel_requests`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rag.errors import GeneratorError
from rag.generation.base import (
    GenerationCancelled,
    GenerationParams,
    Generator,
    Messages,
    TextStream,
    apply_stop,
    current_cancel,
)
from rag.generation.models import AUTO_DTYPE, DTYPES, load_local_model, read_prompt_format, resolve_prefill_dtype
from rag.generation.decoder import load_onnx_decoder, release_decoders, resolve_decoder
from rag.generation.prefill import cache_kwarg, output_cache, packed_continuations, read_prompt
from rag.generation.spec import ModelSpec, resolve_model


class _Interrupted(BaseException):  # control flow, like GeneratorExit: no `except Exception` swallows it
    """Raised inside the model's forward pass to abandon work that was cancelled."""


class GenerationStream(TextStream):
    """The pieces of one local generation; `cancel()` (from any thread) stops the model within one decoder
    layer, even while it reads the prompt, and the iteration then ends early; `close()` (from the iterating
    thread) stops it and waits until the model is free.

    Why: a cancel that waited for the next token left the model busy for the whole prompt prefill (seconds
    for a 1,100-token RAG prompt) after a `rag serve` client had hung up.

    :param pieces: the generation's pieces (a generator: `close()` ends it).
    :param cancel: the event the model's work checks; `cancel()` sets it.
    """

    def __init__(self, pieces: Iterator[str], cancel: threading.Event) -> None:
        super().__init__(pieces)
        self._cancel = cancel


def release_local_models() -> None:
    """Forget the models and ONNX decoders this process loaded (`raft eval` between models, so that the next
    one does not share the RAM with this one); a LocalGenerator still in use keeps its own."""
    load_local_model.cache_clear()
    release_decoders()


class LocalGenerator(Generator):
    """A transformers chat model run in-process on CPU (by default the bundled SmolLM2-135M-Instruct), with
    the decoder chosen by `decoder` writing the answers."""

    local = True
    supports_logprobs = True
    supports_prefixes = True
    #: plain transformers: one generation at a time (a lock). With an ONNX decoder the instance sets it True:
    #: concurrent answers share decode passes (rag/generation/decoder/engine.py).
    parallel_requests = False
    small_model = True  # every local model this project ships or trains is 135M-0.5B parameters

    def __init__(
        self,
        model: ModelSpec | str | Path = "bundled",
        *,
        dtype: str = "auto",
        cache_dir: str | Path | None = None,
        decoder: str = "auto",
        draft: str = "auto",
        prefill_dtype: str = "auto",
    ) -> None:
        """Load a local model (once per process and dtype).

        :param model: a resolved ModelSpec, or any local spec `resolve_model` accepts: "bundled", "teacher",
            a transformers model folder, a .gguf file (converted once into `cache_dir`), a `raft train` output.
        :param dtype: "auto" (float32: rag.generation.models.AUTO_DTYPE says why), "float32" or "bfloat16".
        :param cache_dir: where converted GGUF models and ONNX decoders live (default: the model cache).
        :param decoder: who writes the answer after transformers has read the prompt: "auto"
            (rag.generation.decoder.onnx.DEFAULT_DECODER), "packed-a8" / "fp32" / "int8" / "int4" (an ONNX Runtime decoder,
            built once into `cache_dir`), or "transformers" (plain `model.generate`). See rag/generation/decoder/onnx.py.
        :param draft: speculative decoding's proposer under an ONNX decoder: "auto" (rag.generation.decoder's
            resolve_draft default), "int8" / "int4" (a draft model, built once), "lookup" (prompt lookup only) or "off".
        :param prefill_dtype: the precision prompts are read in: "auto" (rag.generation.models.resolve_prefill_dtype),
            "float32" or "bfloat16" (CPU autocast); the answer is written by `decoder` either way.
        :raises GeneratorError: for an unknown dtype, prefill dtype, decoder or spec, an http spec, a model that cannot be
            loaded, or an ONNX decoder named by `decoder` that cannot be built (the default
            falls back to "transformers" with a note on stderr).
        """
        if dtype not in DTYPES:
            raise GeneratorError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        self.spec = resolve_model(model)
        self.model_dir = self.spec.local_dir(cache_dir)  # raises for an http spec
        self.model_id = self.spec.model_id
        self.prompt_format = read_prompt_format(self.model_dir)  # "raft" for a `raft train` model
        self.dtype = AUTO_DTYPE if dtype == "auto" else dtype
        self.prefill_dtype = resolve_prefill_dtype(prefill_dtype)
        self._loaded = load_local_model(str(self.model_dir.resolve()), self.dtype, self.prefill_dtype)
        self.context_window = int(getattr(self._loaded.model.config, "max_position_embeddings", 2048))
        self.decoder = resolve_decoder(decoder)
        self._decoder = None
        if self.decoder != "transformers":
            try:
                self._decoder = load_onnx_decoder(self.model_dir, self.decoder, cache_dir, draft=draft)
            except GeneratorError as e:
                if decoder not in (None, "auto"):
                    raise  # asked for by name: say so
                # the default cannot serve this model (e.g. an architecture the ONNX builder does not know)
                print(f"rag: {e}; answering with plain transformers instead", file=sys.stderr, flush=True)
                self.decoder = "transformers"
        self.parallel_requests = self._decoder is not None

    def _run_generate(self, inputs: dict[str, Any], kwargs: dict[str, Any], stop: Callable[[], bool] | None,
                      seed: int | None, **extra: Any) -> Any:
        """`model.generate(**inputs, **kwargs, **extra)` with the chosen decoder; returns its ids tensor.

        Plain transformers holds the model's lock throughout. The ONNX decoder holds it only while the
        transformers model reads the prompt, so concurrent callers' answers are decoded together by its
        DecodeEngine (rag/generation/decoder/engine.py) while the next prompt is read.

        :param stop: polled while waiting for the lock, in every decoder layer and before every decode pass.
        :raises GenerationCancelled: when `stop()` became true.
        """
        import torch

        if self._decoder is None:
            with self._holding_lock(stop), torch.inference_mode(), self._interruptible(stop):
                if seed is not None:
                    torch.manual_seed(seed)
                return self._loaded.model.generate(**inputs, **kwargs, **extra)
        def interrupt() -> None:
            if stop is not None and stop():
                raise GenerationCancelled(f"{self.model_id}: cancelled")

        @contextmanager
        def reading() -> Iterator[None]:
            with self._holding_lock(stop), self._interruptible(stop):
                yield

        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            return self._decoder.generate(**inputs, **kwargs, **extra, loaded=self._loaded, interrupt=interrupt,
                                          reading=reading)

    @contextmanager
    def _holding_lock(self, stop: Callable[[], bool] | None, priority: int = 0) -> Iterator[None]:
        """The model's lock (models.ModelLock; priority 0: an answer's prompt, before quote scoring), given
        up with GenerationCancelled when `stop()` turns true while waiting."""
        lock = self._loaded.lock
        while not lock.acquire(timeout=0.1, priority=priority):
            if stop is not None and stop():
                raise GenerationCancelled(f"{self.model_id}: cancelled while waiting for the model")
        try:
            yield
        finally:
            lock.release()

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (for callers that need to trim text to a token budget)."""
        return self._loaded.tokenizer

    @contextmanager
    def _interruptible(self, stop: Callable[[], bool] | None) -> Iterator[Callable[[], None] | None]:
        """While open (holding the model's lock), every decoder layer first checks `stop()` and abandons
        the forward pass when it is true: a cancel lands within one layer, even mid-prefill. Yields that
        check (None without `stop`) for work outside the transformers model (the ONNX decoder's steps).

        :raises GenerationCancelled: when the work inside was abandoned.
        """
        if stop is None:
            yield None
            return
        import torch

        def check(*_: Any) -> None:
            if stop():
                raise _Interrupted()

        layers = [layer for m in self._loaded.model.modules() if isinstance(m, torch.nn.ModuleList) for layer in m]
        hooks = [layer.register_forward_pre_hook(check) for layer in layers]
        try:
            yield check
        except _Interrupted:
            raise GenerationCancelled(f"{self.model_id}: cancelled") from None
        finally:
            for hook in hooks:
                hook.remove()

    def _encode(self, messages: Messages) -> dict[str, Any]:
        try:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        except Exception as e:
            raise GeneratorError(f"cannot apply the chat template of {self.model_id}: {e}") from e

    def count_tokens(self, messages_or_text: Messages | str) -> int:
        """Exact prompt size in tokens: chat template + generation prompt for messages, plain encoding for text."""
        if isinstance(messages_or_text, str):
            return len(self.tokenizer(messages_or_text, add_special_tokens=False)["input_ids"])
        return int(self._encode(messages_or_text)["input_ids"].shape[1])

    def _generate_kwargs(self, params: GenerationParams, prompt_len: int) -> dict[str, Any]:
        room = self.context_window - prompt_len
        if room < 1:
            raise GeneratorError(
                f"the prompt is {prompt_len} tokens but {self.model_id} holds {self.context_window}: "
                "use fewer or shorter context chunks"
            )
        kwargs: dict[str, Any] = {
            "max_new_tokens": min(params.max_new_tokens, room),
            "repetition_penalty": params.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": params.sampling,
        }
        if params.sampling:
            # Sampling flags are only passed when sampling: transformers warns about them under greedy.
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        return kwargs

    def _prompt_text(self, messages: Messages, prefix: str = "") -> str:
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:
            raise GeneratorError(f"cannot apply the chat template of {self.model_id}: {e}") from e
        return text + prefix

    def generate_batch(self, batch: list[Messages], params: GenerationParams | None = None,
                       prefixes: list[str] | None = None, batch_size: int = 8) -> list[str]:
        """Whole answers to several conversations, `batch_size` at a time in one left-padded `generate` call.

        A prefix starts the assistant's reply (the model continues it; it is not part of the returned text).
        On a CPU a batch of 8 decodes several times more tokens per second than 8 single runs.
        """
        params = params or GenerationParams()
        if not batch:
            return []
        prefixes = prefixes or [""] * len(batch)
        if len(prefixes) != len(batch):
            raise GeneratorError("generate_batch needs one prefix per conversation")
        texts = [self._prompt_text(m, p) for m, p in zip(batch, prefixes)]
        tok = self.tokenizer
        # longest first keeps the padding of each slice small
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[str] = [""] * len(texts)
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start:start + batch_size]
            side = tok.padding_side
            tok.padding_side = "left"
            try:
                enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            finally:
                tok.padding_side = side
            kwargs = self._generate_kwargs(params, int(enc["input_ids"].shape[1]))
            if params.stop:
                kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
            scope = current_cancel()
            try:
                ids = self._run_generate(enc, kwargs, scope and scope.is_set, params.seed)
            except GenerationCancelled:
                raise
            except Exception as e:
                raise GeneratorError(f"{self.model_id} failed while generating: {type(e).__name__}: {e}") from e
            for row, i in enumerate(idx):
                text = tok.decode(ids[row, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                out[i] = "".join(apply_stop([text], params.stop))
        return out

    def clear_prompt_cache(self) -> None:
        """Forget the last prompt's key/value cache (rag/generation/prefill.py), e.g. so a benchmark times a
        prompt read from scratch; the next call reads its whole prompt again."""
        with self._loaded.lock:
            self._loaded.prompt_cache.clear()

    def continuation_logprobs(self, messages: Messages, prefix: str, continuations: list[str],
                              first_tokens: int | None = None) -> list[tuple[float, int]]:
        """(summed log-probability, token count) of each continuation after the chat prompt + `prefix`.

        The prompt runs once (or comes from the prompt cache); the distinct continuations then go through
        together, packed in one row after its key/value cache, each seeing only the prompt and itself
        (rag/generation/prefill.py `packed_continuations`).
        """
        import torch

        if not continuations:
            return []
        tok = self.tokenizer
        prompt = tok(self._prompt_text(messages, prefix), return_tensors="pt", add_special_tokens=False)
        conts = [tuple((tok(c, add_special_tokens=False)["input_ids"] or [tok.eos_token_id])[:first_tokens])
                 for c in continuations]
        distinct = list(dict.fromkeys(conts))  # a sentence found in two passages is read once
        plen = int(prompt["input_ids"].shape[1])
        width = max(len(c) for c in distinct)
        if plen + width > self.context_window:
            raise GeneratorError(f"the prompt ({plen} tokens) plus a continuation ({width} tokens) exceed the "
                                 f"{self.context_window}-token window of {self.model_id}: use fewer passages")
        model = self._loaded.model
        ids, positions, mask = packed_continuations(plen, [list(c) for c in distinct],
                                                    model.config._attn_implementation, model.dtype)
        scope = current_cancel()
        with (self._loaded.lock, torch.inference_mode(), self._interruptible(scope and scope.is_set),
              self._loaded.reading()):
            # the prompt's last logits only, reusing the cache of the last prompt read (rag/generation/prefill.py)
            first = read_prompt(model, self._loaded.prompt_cache, prompt["input_ids"])
            rest = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                         **{cache_kwarg(model): output_cache(first)})
            first_logp = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
            rest_logp = torch.log_softmax(rest.logits[0].float(), dim=-1)
        scores: dict[tuple[int, ...], tuple[float, int]] = {}
        offset = 0
        for c in distinct:
            # token t of a continuation is predicted by the prompt's last logits (t=0) or by its token t-1
            later = rest_logp[offset: offset + len(c) - 1].gather(-1, torch.tensor(c[1:])[:, None])
            scores[c] = (float(first_logp[c[0]]) + float(later.sum()), len(c))
            offset += len(c)
        return [scores[c] for c in conts]

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> GenerationStream:
        """Answer pieces as `model.generate` (in a background thread) produces them."""
        params = params or GenerationParams()
        # Do the work that can fail before the generator starts, so errors surface at the call site.
        inputs = self._encode(messages)
        kwargs = self._generate_kwargs(params, int(inputs["input_ids"].shape[1]))
        cancel = threading.Event()
        return GenerationStream(self._stream(inputs, kwargs, params, cancel, current_cancel()), cancel)

    def _stream(self, inputs: dict[str, Any], kwargs: dict[str, Any], params: GenerationParams,
                cancel: threading.Event | None = None, scope: threading.Event | None = None) -> Iterator[str]:
        import torch
        from transformers import (
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        cancel = cancel or threading.Event()

        def cancelled() -> bool:  # the stream's own cancel(), or the caller's cancel_scope
            return cancel.is_set() or (scope is not None and scope.is_set())

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancelled(), dtype=torch.bool)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self._run_generate(inputs, kwargs, cancelled, params.seed, streamer=streamer,
                                   stopping_criteria=StoppingCriteriaList([_Cancelled()]))
            except GenerationCancelled:
                streamer.end()  # cancelled: the consumer's iteration ends, without an error
            except BaseException as e:  # noqa: BLE001 - handed to the consumer thread below
                failure.append(e)
                streamer.end()  # unblock the consumer

        thread = threading.Thread(target=work, name="rag-generate", daemon=True)
        thread.start()
        try:
            yield from apply_stop((piece for piece in streamer if piece), params.stop)
            if failure:
                e = failure[0]
                raise GeneratorError(f"{self.model_id} failed while generating: {type(e).__name__}: {e}") from e
        finally:
            cancel.set()  # stops generation at the next token if we left early (stop string, close, error)
            thread.join(timeout=60)
