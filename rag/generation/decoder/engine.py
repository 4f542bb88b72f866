"""The decode loop of the ONNX decoder: continuous batching of concurrent answers, speculative decoding of a
lone one.

Every answer the ONNX decoder writes (rag/generation/decoder/onnx.py) is a `DecodeSequence` handed to one
`DecodeEngine` per decoder, whose thread runs the forward passes:

* Continuous batching (Yu et al. 2022, "Orca"; vLLM's scheduler): sequences join and leave between
  passes. Each pass feeds the last token of every running sequence, so four answers advance in one pass
  that reads the weights once (on a CPU an unpacked fp32 one-token pass is bound by memory bandwidth:
  a 16-token pass of one sequence costs about 1.2 one-token passes). The key/value cache is one preallocated
  buffer per layer, [sequences, kv_heads, capacity, head_dim]; ONNX Runtime's GroupQueryAttention reads
  row b up to its own length (attention_mask), writes in place, and rows of different lengths need no
  padding. The buffer is rebuilt (rows copied) only when a sequence joins or leaves.
* Speculative decoding (rag/generation/decoder/speculative.py) while a greedy sequence runs alone, unless the
  decoder says otherwise (`speculate`): prompt lookup or a draft model proposes tokens, one pass of the
  real model checks them all, and the sequence keeps the longest prefix the real model would have chosen
  plus the real model's own next token - the same text as one token per pass.

Token choice stays with transformers' logits processors and stopping criteria, applied per sequence to
its own tokens, so a repetition penalty, sampling, minimum length, stop strings and EOS mean what they
mean in `model.generate`, and an answer is the same whether it ran alone or in a batch. The prompt is read
by the caller (transformers, under the model's lock), so one request's prefill runs while the engine
decodes the others on the other core.

Written by hand: ONNX Runtime GenAI has continuous batching only in its server-side engine for GPUs, and
transformers' continuous batching (`generate_batch`/`init_continuous_batching`) drives transformers models,
whose decode steps are the slow part replaced here.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from rag.generation.decoder.speculative import (
    DRAFT_MAX,
    DRAFT_START,
    LOOKUP_TOKENS,
    next_draft_length,
    prompt_lookup,
)

_ROUND = 128  # buffer capacity grows in steps of this many positions
_LOOKAHEAD = max(DRAFT_MAX, LOOKUP_TOKENS) + 2  # positions a speculative pass may write past the answer


class DecodeSequence:
    """One answer being written: its tokens, its prompt's key/value cache until it joins, how to pick tokens.

    :param prompt_ids: the prompt's real token ids (no padding).
    :param kv: per layer (keys, values), float32 tensors [kv_heads, prompt_len, head_dim] (a copy the
        sequence owns); dropped once copied into the engine's buffer.
    :param scores: float32 tensor [vocab]: the logits of the first new token (from the prefill).
    :param processors: a transformers LogitsProcessorList applied to this sequence's own ids.
    :param criteria: a transformers StoppingCriteriaList (stop strings, cancellation), may be empty.
    :param eos_ids: token ids that end the answer (written, then the sequence finishes).
    :param max_new_tokens: the most tokens written.
    :param do_sample: sample from the processed distribution instead of taking the argmax.
    :param on_token: called (in the engine's thread) with every new token id, in order.
    :param interrupt: called before every pass this sequence takes part in; what it raises ends the sequence
        and is raised again by `DecodeEngine.run` in the caller's thread.
    """

    def __init__(self, prompt_ids: list[int], kv: list[tuple[Any, Any]], scores: Any, processors: Any,
                 criteria: Any, eos_ids: set[int], max_new_tokens: int, do_sample: bool = False,
                 on_token: Callable[[int], None] | None = None,
                 interrupt: Callable[[], None] | None = None) -> None:
        self.ids = list(prompt_ids)
        self.prompt_len = len(prompt_ids)
        self.kv: list[tuple[Any, Any]] | None = kv
        self.scores = scores
        self.processors = processors
        self.criteria = criteria
        self.eos_ids = eos_ids
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.on_token = on_token
        self.interrupt = interrupt
        self.cached = len(prompt_ids)  # tokens whose keys/values are in the cache (all but the newest)
        self.finished = False
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.draft_len = DRAFT_START

    @property
    def new_tokens(self) -> list[int]:
        """The tokens written so far."""
        return self.ids[self.prompt_len:]


class DecodeEngine:
    """Runs every DecodeSequence of one ONNX decoder in one thread (continuous batching, speculation alone).

    :param session: the decoder's InferenceSession: inputs input_ids [batch, seq], attention_mask [batch,
        total], past_key_values.{layer}.key/value [batch, kv_heads, capacity, head_dim] sharing memory with
        the outputs present.*; output logits [batch, seq, vocab] (every position: the LM head is not pruned).
    :param layers, kv_heads, head_dim, vocab: the model's shape.
    :param draft: an InferenceSession of the same model with cheaper weights (logits of the last position
        suffice), or None for prompt lookup only; may be set later (`engine.draft = session`).
    :param speculate: False = one token per pass always (a benchmark's or a caller's choice).
    """

    def __init__(self, session: Any, layers: int, kv_heads: int, head_dim: int, vocab: int,
                 draft: Any = None, speculate: bool = True) -> None:
        self.session = session
        self.draft = draft
        self.speculate = speculate
        self.layers, self.kv_heads, self.head_dim, self.vocab = layers, kv_heads, head_dim, vocab
        self._cond = threading.Condition()
        self._pending: list[DecodeSequence] = []
        self._members: list[DecodeSequence] = []
        self._buffers: list[tuple[Any, Any]] = []
        self._packed: list[DecodeSequence] = []  # the sequences whose rows the buffers hold, in row order
        self._bindings: dict[str, Any] = {}
        self._capacity = 0
        self._thread: threading.Thread | None = None
        #: how many sequences each real-model pass carried (a benchmark's and a test's evidence of batching)
        self.batch_sizes: Counter[int] = Counter()
        #: draft tokens proposed and accepted by speculative passes, by proposer ("lookup", "draft")
        self.speculation: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------------ public

    def run(self, sequences: list[DecodeSequence]) -> None:
        """Write every sequence to its end (with whatever else is running), blocking the caller.

        :raises: the first error a sequence ended with (its interrupt's, or a failed pass's).
        """
        with self._cond:
            self._pending.extend(sequences)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="rag-decode", daemon=True)
                self._thread.start()
            self._cond.notify()
        for seq in sequences:
            seq.done.wait()
        for seq in sequences:
            if seq.error is not None:
                raise seq.error

    # ------------------------------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._members:
                    self._cond.wait()
                joining, self._pending = self._pending, []
            try:
                changed = bool(joining)
                for seq in joining:
                    if self._interrupted(seq):  # cancelled after its prompt was read: not even a first token
                        continue
                    self._choose(seq, seq.scores)  # the first new token, from the prefill's logits
                    if not seq.finished:
                        self._members.append(seq)
                if self._alone_and_greedy():
                    self._speculative_pass(self._members[0], changed)
                elif self._members:
                    self._batch_pass(changed)
            except BaseException as e:  # noqa: BLE001 - a failed pass ends every sequence in it, with the error
                for seq in [*joining, *self._members]:
                    self._finish(seq, e)
                self._members = []
            self._members = [m for m in self._members if not m.finished]
            if not self._members:  # idle: give the buffers' memory back
                self._buffers, self._bindings, self._packed, self._capacity = [], {}, [], 0

    def _alone_and_greedy(self) -> bool:
        return self.speculate and len(self._members) == 1 and not self._members[0].do_sample

    def _finish(self, seq: DecodeSequence, error: BaseException | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        seq.error = error
        seq.kv = None
        seq.done.set()

    def _interrupted(self, seq: DecodeSequence) -> bool:
        if seq.interrupt is None:
            return False
        try:
            seq.interrupt()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread by run()
            self._finish(seq, e)
            return True
        return False

    def _choose(self, seq: DecodeSequence, logits: Any) -> int:
        """Pick the next token from `logits` [vocab] with the sequence's processors; append it; finish on
        EOS, the length limit or a stopping criterion. Returns the token."""
        import torch

        ids = torch.tensor([seq.ids])
        scores = seq.processors(ids, logits[None].to(torch.float32, copy=True))
        if seq.do_sample:
            token = int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)[0, 0])
        else:
            token = int(torch.argmax(scores, dim=-1)[0])
        self._append(seq, token, scores)
        return token

    def _append(self, seq: DecodeSequence, token: int, scores: Any) -> None:
        import torch

        seq.ids.append(token)
        if seq.on_token is not None:
            seq.on_token(token)
        if token in seq.eos_ids or len(seq.ids) - seq.prompt_len >= seq.max_new_tokens:
            self._finish(seq)
        elif len(seq.criteria) and bool(seq.criteria(torch.tensor([seq.ids]), scores)[0]):
            self._finish(seq)

    # ------------------------------------------------------------------------------------------ passes

    def _batch_pass(self, changed: bool) -> None:
        """One pass of the real model for every running sequence: feed each one's newest token, choose the next."""
        import numpy as np
        import torch

        members = [m for m in self._members if not self._interrupted(m)]
        if not members:
            return
        if changed or members != self._packed or self._needs_room(members, 1):
            self._pack(members)
        self._members = members
        tokens = [[m.ids[-1]] for m in members]
        logits = self._run("target", tokens, [m.cached for m in members])
        self.batch_sizes[len(members)] += 1
        for row, m in enumerate(members):
            m.cached += 1
            self._choose(m, torch.from_numpy(np.ascontiguousarray(logits[row, -1])))

    def _speculative_pass(self, seq: DecodeSequence, changed: bool) -> None:
        """Propose tokens (prompt lookup, else the draft model), check them in one pass, keep the agreed prefix."""
        import torch

        if self._interrupted(seq):
            return
        if (changed or self._packed != [seq] or self._needs_room([seq], _LOOKAHEAD)
                or (self.draft is not None and "draft" not in self._bindings)):  # the draft model arrived
            self._pack([seq])
        room = seq.max_new_tokens - (len(seq.ids) - seq.prompt_len)
        proposal = prompt_lookup(seq.ids)[:room]
        from_lookup, from_draft = bool(proposal), False
        if not proposal and self.draft is not None and room > 0:
            proposal = self._draft(seq, min(seq.draft_len, room))
            from_draft = True
        logits = self._run("target", [[seq.ids[-1], *proposal]], [seq.cached])
        self.batch_sizes[1] += 1
        seq.cached += 1  # the newest token is in the cache now
        kept = 0
        for j, guess in enumerate(proposal):
            scores_row = torch.from_numpy(logits[0, j].copy())
            token = self._choose(seq, scores_row)
            if token != guess or seq.finished:
                break
            seq.cached += 1
            kept += 1
        else:
            self._choose(seq, torch.from_numpy(logits[0, len(proposal)].copy()))
        if from_lookup or from_draft:
            source = "draft" if from_draft else "lookup"
            self.speculation[f"{source}_proposed"] += len(proposal)
            self.speculation[f"{source}_accepted"] += kept

        if from_draft:
            seq.draft_len = next_draft_length(seq.draft_len, len(proposal), kept)

    def _draft(self, seq: DecodeSequence, n: int) -> list[int]:
        """n greedy tokens of the draft model after seq's newest token; its keys/values land in the shared
        buffer past the sequence's length, where the real model's pass overwrites them."""
        import torch

        ids = list(seq.ids)
        proposal: list[int] = []
        for i in range(n):
            logits = self._run("draft", [[ids[-1]]], [seq.cached + i])
            scores = seq.processors(torch.tensor([ids]), torch.from_numpy(logits[0, -1].copy())[None])
            token = int(torch.argmax(scores, dim=-1)[0])
            if token in seq.eos_ids:
                break
            proposal.append(token)
            ids.append(token)
        return proposal

    # ------------------------------------------------------------------------------------------ buffers

    def _needs_room(self, members: list[DecodeSequence], ahead: int) -> bool:
        return any(m.cached + ahead + 1 > self._capacity for m in members)

    def _pack(self, members: list[DecodeSequence]) -> None:
        """Rebuild the key/value buffers for exactly `members` (rows in order) and bind both sessions to them."""
        import numpy as np
        import onnxruntime as ort
        import torch

        need = max(m.cached + (m.max_new_tokens - len(m.new_tokens)) + _LOOKAHEAD for m in members)
        capacity = -(-need // _ROUND) * _ROUND
        old_rows = {id(m): row for row, m in enumerate(self._packed)}
        buffers = []
        for layer in range(self.layers):
            pair = []
            for part in (0, 1):
                buf = np.zeros((len(members), self.kv_heads, capacity, self.head_dim), dtype=np.float32)
                view = torch.from_numpy(buf)  # shares memory
                for row, m in enumerate(members):
                    if m.kv is not None:
                        view[row, :, : m.cached].copy_(m.kv[layer][part])
                    else:
                        old = self._buffers[layer][part][old_rows[id(m)]]
                        buf[row, :, : m.cached] = old[:, : m.cached]
                pair.append(buf)
            buffers.append((pair[0], pair[1]))
        for m in members:
            m.kv = None
        self._buffers, self._capacity, self._packed = buffers, capacity, list(members)
        self._bindings = {}
        for name, session in (("target", self.session), ("draft", self.draft)):
            if session is None or (name == "draft" and len(members) != 1):
                continue
            binding = session.io_binding()
            for layer, (key, value) in enumerate(buffers):
                for part, buf in ((f"{layer}.key", key), (f"{layer}.value", value)):
                    shared = ort.OrtValue.ortvalue_from_numpy(buf)
                    binding.bind_ortvalue_input(f"past_key_values.{part}", shared)
                    binding.bind_ortvalue_output(f"present.{part}", shared)  # written in place
            self._bindings[name] = binding

    def _run(self, which: str, tokens: list[list[int]], starts: list[int]) -> Any:
        """One pass: row b feeds tokens[b] at positions starts[b]..; returns logits [rows, positions, vocab]."""
        import numpy as np
        import onnxruntime as ort

        session = self.session if which == "target" else self.draft
        binding = self._bindings[which]
        rows, width = len(tokens), len(tokens[0])
        mask = np.zeros((rows, self._capacity), dtype=np.int64)
        for row, start in enumerate(starts):
            mask[row, : start + width] = 1
        binding.bind_cpu_input("input_ids", np.asarray(tokens, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", mask)
        width_out = width if which == "target" else 1
        logits = np.empty((rows, width_out, self.vocab), dtype=np.float32)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        session.run_with_iobinding(binding)
        return logits
