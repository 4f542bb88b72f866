"""Reading a prompt through the transformers model, reusing the key/value cache of the last prompt it read.

Why: a grounded answer (rag/answering/grounding.py, the default `rag ask`) reads the same ~1,400-token RAG
prompt twice: once to score the quote candidates (`continuation_logprobs`) and once more, with the chosen
quote appended, to write the short answer. The second read was a whole prefill again (a fifth of a fresh
`rag ask`'s time); with the first prompt's cache kept, it reads only the quote and
the answer cue (tens of tokens). llama.cpp and vLLM keep a prompt cache for the same reason.

One cache per loaded model (LoadedModel.prompt_cache), used under the model's lock; it holds the last
PROMPTS_KEPT prompts (about 65 MB each for 1,400 tokens of SmolLM2-135M in fp32): `rag serve` writes up to
4 answers at once (rag/generation/decoder/engine.py), and one request's quote scoring must not evict the prompt
another request is about to answer from. The reused part is computed exactly as before, so
only the split of the prompt into two matrix products changes: logits move by ~1e-5 (measured in
tests/rag/generation/decoder/test_onnx.py, prompts read in float32), below anything a greedy argmax or a
multiple-choice ranking notices. Read in bf16 (models.LoadedModel.reading), the values are kept in bf16 (the keys
stay fp32: the rotary step computes them so), three quarters of the memory.

Continuations after one prompt (quote candidates, multiple-choice options) are read *packed*
(`packed_continuations`): all of them in one row after the prompt's cache, each seeing the prompt and its
own earlier tokens only (a block-causal 4D mask, positions restarting after the prompt for each) - the
shared-prefix packing of tree attention (SpecInfer, Miao et al. 2024; Medusa). The earlier form, a
right-padded batch over n copies of the prompt's cache, read n x the longest continuation and copied the
cache n times: scoring 8 quote candidates after a 1,100-1,400-token prompt took up to three times as long beyond
the prompt as packed; summed log-probabilities moved by at most 4e-5 on 7 real prompts, and each
equals the continuation read alone after the prompt (tests/rag/generation/test_backends.py).
"""

from __future__ import annotations

import inspect
from typing import Any

#: Shorter common prefixes are read again: reusing them would save less than copying the cache costs.
MIN_REUSE_TOKENS = 64
#: Prompts kept per model (least recently stored dropped first): the server's default parallel slots.
PROMPTS_KEPT = 4


def cache_kwarg(model: Any) -> str:
    """The forward argument that takes a KV cache: `cache` in transformers >= 5.x, else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache of a model output (`cache` in transformers >= 5.x, else `past_key_values`)."""
    cache = out.get("cache")
    return cache if cache is not None else out.past_key_values


class PromptCache:
    """The token ids and KV caches of the last `size` prompts a model read; hands out copies of the longest
    stored prefix of a new prompt."""

    def __init__(self, size: int = PROMPTS_KEPT) -> None:
        self.size = size
        self.entries: list[tuple[list[int], list[tuple[Any, Any]]]] = []  # newest first
        self._chosen = 0

    def clear(self) -> None:
        """Forget the stored prompts (frees their memory)."""
        self.entries = []

    def common_prefix(self, ids: list[int]) -> int:
        """Tokens at the start of `ids` whose cache is stored (the longest among the stored prompts, which
        `prefix_cache` then copies); always leaves at least one token to read."""
        best, self._chosen = 0, 0
        for i, (stored, _) in enumerate(self.entries):
            n = 0
            for a, b in zip(stored, ids[:-1]):
                if a != b:
                    break
                n += 1
            if n > best:
                best, self._chosen = n, i
        return best if best >= MIN_REUSE_TOKENS else 0

    def store(self, ids: list[int], cache: Any) -> None:
        """Keep a copy of `cache` (batch 1, covering exactly `ids`); it replaces stored prompts that are a
        prefix of `ids` and, past `size`, the oldest."""
        layers = [(layer.keys[:, :, : len(ids)].clone(), layer.values[:, :, : len(ids)].clone())
                  for layer in cache.layers]
        kept = [(s, c) for s, c in self.entries if ids[: len(s)] != s]
        self.entries = [(list(ids), layers), *kept][: self.size]

    def prefix_cache(self, n: int, config: Any) -> Any:
        """A fresh DynamicCache holding copies of the first `n` positions of the prompt `common_prefix` chose."""
        from transformers import DynamicCache

        layers = self.entries[self._chosen][1]
        return DynamicCache(ddp_cache_data=[(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in layers],
                            config=config)


def packed_continuations(prompt_len: int, continuations: list[list[int]], attn_implementation: str,
                         dtype: Any) -> tuple[Any, Any, Any]:
    """Inputs that read all `continuations` in one row after a prompt's cache, each blind to the others.

    :param prompt_len: tokens in the prompt's cache (P).
    :param continuations: token ids of each continuation (none empty); T = their total length.
    :param attn_implementation: the model's `config._attn_implementation`: "sdpa" takes a boolean mask
        (True = attend), anything else an additive float mask (0 or the dtype's minimum).
    :param dtype: the model's dtype (of an additive mask).
    :returns: (input_ids LongTensor [1, T], position_ids LongTensor [1, T] - each continuation at P, P+1, ...,
        attention_mask [1, 1, T, P + T] - every prompt position, then causal within the own continuation).
    """
    import torch

    lengths = torch.tensor([len(c) for c in continuations])
    total = int(lengths.sum())
    ids = torch.tensor([t for c in continuations for t in c], dtype=torch.long)[None]
    segment = torch.repeat_interleave(torch.arange(len(continuations)), lengths)
    starts = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    order = torch.arange(total)
    positions = (prompt_len + order - starts)[None]
    own = (segment[:, None] == segment[None, :]) & (order[None, :] <= order[:, None])
    allowed = torch.cat([torch.ones(total, prompt_len, dtype=torch.bool), own], dim=1)[None, None]
    if attn_implementation == "sdpa":
        return ids, positions, allowed
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return ids, positions, mask


def read_prompt(model: Any, prompt_cache: PromptCache | None, input_ids: Any, logits_to_keep: int = 1) -> Any:
    """Run a batch-1 prompt through `model` and return its output (logits of the last position, cache).

    :param model: a transformers causal LM (call inside `torch.inference_mode()` and the model's lock).
    :param prompt_cache: the model's PromptCache (None: no reuse, nothing stored).
    :param input_ids: LongTensor [1, n] (no padding).
    :param logits_to_keep: positions at the end whose logits are computed (1: the next-token logits only).
    :returns: the model output; `output_cache(out)` covers all n tokens; `out.logits` [1, logits_to_keep, V].
    """
    import torch

    ids = input_ids[0].tolist()
    reuse = prompt_cache.common_prefix(ids) if prompt_cache is not None else 0
    kwargs: dict[str, Any] = {"use_cache": True, "logits_to_keep": logits_to_keep}
    if reuse:
        kwargs[cache_kwarg(model)] = prompt_cache.prefix_cache(reuse, model.config)
        out = model(input_ids=input_ids[:, reuse:], attention_mask=torch.ones_like(input_ids), **kwargs)
    else:
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    if prompt_cache is not None:
        prompt_cache.store(ids, output_cache(out))
    return out
