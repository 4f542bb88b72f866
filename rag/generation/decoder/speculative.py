"""Draft tokens for speculative decoding: prompt lookup, and how many tokens a draft model proposes.

Speculative decoding (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding")
lets a cheap proposer guess the next k tokens; the real model checks all of them in one forward pass and
keeps the longest prefix it would have chosen itself, plus its own next token. Under greedy decoding the
text is the real model's, token for token; only the number of forward passes changes. On a CPU a
16-token check of the bundled model's fp32 decoder costs about 1.2 one-token steps (weights are read once
per pass; decoding is bound by memory bandwidth; bench/generation.py), so every accepted draft token is nearly free. Not so on a
decoder whose matrices are packed 4-bit blocks (rag/generation/decoder/packing.py): ONNX Runtime's fp32 4-bit
kernel is fast for one token only, a check of several costs 2.5-4x a step, and speculating there was
slower than one token per pass (1.9-2.0x against 2.8x transformers' decode): off by default there.

Two proposers, tried in this order (rag/generation/decoder/engine.py):

* prompt lookup (Saxena 2023, "Prompt Lookup Decoding"; transformers' `prompt_lookup_num_tokens`): the last
  n tokens (n = 3, then 2) appeared earlier in the prompt or the answer; propose what followed them there.
  Free, and RAG answers copy their passages' wording often.
* a draft model: the same model with int8 weights (rag/generation/decoder/onnx.py), reading the real model's
  key/value cache. It agreed with the fp32 model on 97% of next tokens on a 1,400-token prompt and costs
  about half a step, so it pays only in long accepted runs: its draft length adapts like transformers'
  "heuristic" schedule for assisted generation (+2 after a fully accepted draft, -1 otherwise).

Tried and dropped (3 RAG prompts, 64 greedy tokens, one run): stopping the draft at a token it gives less
than 0.4 (or 0.2) probability, as transformers' `assistant_confidence_threshold` does, and pausing lookup
for 4 passes after a proposal rejected outright: both cost more passes than they saved (26 passes without
either; 30 with the pause, 44-60 with the threshold) and were 10-25% slower.

Written here rather than taken from transformers: its assisted generation runs only on transformers
models (one `model.forward` per check, batch 1) and cannot drive ONNX Runtime sessions that share one
preallocated key/value buffer, which is where the decode speed comes from.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Longest and shortest n-gram matched by prompt lookup, and the most tokens it proposes at once.
LOOKUP_NGRAM = (3, 2)
LOOKUP_TOKENS = 10
#: Draft model length: start, bounds (transformers' assisted generation starts at 5, adds 2, takes 1).
DRAFT_START, DRAFT_MIN, DRAFT_MAX = 5, 2, 12


def prompt_lookup(ids: Sequence[int], max_tokens: int = LOOKUP_TOKENS,
                  ngrams: Sequence[int] = LOOKUP_NGRAM) -> list[int]:
    """Propose the tokens that followed the latest earlier occurrence of the sequence's last n tokens.

    :param ids: the prompt's token ids followed by the answer's so far (at least one token).
    :param max_tokens: the most tokens proposed.
    :param ngrams: the n-gram sizes tried, longest first (a longer match is a safer guess).
    :returns: up to `max_tokens` proposed token ids; [] when no n-gram matched.
    """
    n_ids = len(ids)
    for n in ngrams:
        if n_ids <= n:
            continue
        tail = list(ids[n_ids - n:])
        first = tail[0]
        # the latest match whose continuation is not the tail itself
        for start in range(n_ids - n - 1, -1, -1):
            if ids[start] == first and list(ids[start:start + n]) == tail:
                proposal = list(ids[start + n:start + n + max_tokens])
                if proposal:
                    return proposal
    return []


def next_draft_length(current: int, proposed: int, accepted: int) -> int:
    """The draft model's next length: +2 when every proposed token was accepted, else -1 (bounded).

    :param current: the length just used.
    :param proposed: how many tokens the draft proposed.
    :param accepted: how many of them the real model kept.
    :returns: a length in [DRAFT_MIN, DRAFT_MAX].
    """
    step = 2 if proposed and accepted == proposed else -1
    return max(DRAFT_MIN, min(DRAFT_MAX, current + step))
