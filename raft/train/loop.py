"""LoRA fine-tuning of the generator on a RAFT dataset (`raft train`): train split only, answer tokens only.

Data: a `raft generate` folder (dataset.jsonl; its TRAIN split from raft.splits.split_by_chunk, the same
function and defaults `raft eval` uses, so the held-out test chunks are never trained on), or a
`raft export --format chat` folder/file (messages column; its own train/validation files). Each sample is
raft.prompts.student_messages(documents, question) as the user turn and the CoT answer as the assistant
turn, rendered with the base model's chat template. Only the answer tokens, up to and including the
template's end-of-turn token, carry loss; the prompt is labelled -100. A sample longer than --max-length
loses documents first, never answer tokens: randomly chosen distractors are dropped (the oracle stays,
every shown document stays whole), and only if the oracle alone is still too long are the documents'
tails cut. Samples whose question + answer alone don't fit are skipped. All of it is counted in the report.
--method dsf trains the same samples without documents (the RAFT paper's DSF baseline; raft.train.config);
--oracle-fraction P re-draws which samples show the oracle (raft.train.data.with_oracle_fraction).

Why a plain torch loop rather than TRL's SFTTrainer or transformers.Trainer: TRL is not installed (and
would only add a dependency for what is ~100 lines here); Trainer checkpoints pickle their optimizer,
scheduler and RNG state (torch.save, RNG reloaded with weights_only=False), and this project never
pickles. This loop checkpoints as safetensors + JSON, resumes exactly (the sample order and the LoRA
dropout RNG derive from (seed, step)), and projects onto the 49k-word vocabulary only at answer
positions (`logits_to_keep`), which removes most of the lm_head cost on CPU.

LoRA targets the attention and MLP projections of the llama-architecture SmolLM2 (q,k,v,o,gate,up,down):
the usual choice for small models, 2.4 M trainable parameters at r=8 (1.8% of 135 M).

CPU defaults, measured on a shared 2-core AVX512 CPU with RAFT-shaped samples of the shipped course (5
chunks, ~1,210 SmolLM tokens untruncated, ~120 answer tokens): a float32 training sample's cost grows
with its tokens, a little faster than linearly. --max-length 1024 keeps the oracle and ~2.5 of 4 distractors for
~2/3 of the full cost. bfloat16 autocast was 1.6-1.9x faster but learned less over the same 4 steps
(validation loss 2.76 -> 2.72 against 2.65 in float32), so float32 is the default. 2 threads, with
OMP_WAIT_POLICY=PASSIVE set by the CLI: busy-waiting OpenMP threads crawl when the cores are shared.

Output folder OUT:
  train_config.json        the arguments that decide the model (+ dataset fingerprint); others are refused
  checkpoints/step-N/      adapter.safetensors, optimizer.safetensors, state.json (the newest two are kept)
  train_log.jsonl          one line per optimizer step (step, loss, lr, ...) and the validation losses
  adapter/                 the peft adapter (adapter_config.json + adapter_model.safetensors) and rag_adapter.json
                           (its base model spec): `rag ask --model OUT/adapter` merges it once into the model cache
  merged/                  the merged full model (config, model.safetensors, tokenizer, generation_config) and
                           prompt_format.json ("raft": rag asks it in the conversation it was tuned on)
  loss.png, train_report.json   (the report's `run`: command, seed, start/end, duration, peak memory)
  .lock                    held while a run writes OUT (a second run on the same OUT is refused)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from raft.records import derive_rng
from raft.runinfo import Session, peak_rss_mb
from raft.train.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    replace_dir,
    save_checkpoint,
)
from raft.train.config import (
    ADAPTER,
    CHECKPOINTS,
    CONFIG,
    LOG,
    MAX_GRAD_NORM,
    MERGED,
    PLOT,
    REPORT,
    TrainConfig,
)
from raft.train.data import (
    ChatEncoder,
    Example,
    answer_tokens,
    collate,
    fingerprint,
    load_examples,
    loss_sum,
    mean_loss,
)
from raft.train.model import add_lora, load_base, lr_at, resolve_base
from rag.common.atomic import write_json_atomic, write_text_atomic
from rag.common.runfolder import FolderLock, append_jsonl, check_identity, repair_jsonl
from rag.errors import RagError

# ------------------------------------------------------------------------------------------- the run


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _out_lock(out: Path) -> FolderLock:
    """One `raft train` at a time per output folder (creates the folder)."""
    return FolderLock(out, f"another `raft train` is writing {out}: wait for it to finish, or use another --out",
                      what="output folder", hint="fix its permissions or use another --out")


def _check_out(out: Path, identity: dict[str, Any]) -> None:
    """Create OUT's train_config.json, or check that an existing one was made with the same arguments."""
    check_identity(out, CONFIG, identity, what="a training run", option="--out",
                   leftovers=(CHECKPOINTS, ADAPTER, MERGED, LOG, REPORT, PLOT))  # train writes them, --no-resume removes them


def _finished_report(out: Path) -> dict[str, Any] | None:
    """The report of a finished run in OUT (None when unfinished, or when the report is unreadable: redo the end)."""
    if not ((out / REPORT).is_file() and (out / MERGED / "config.json").is_file()):
        return None
    try:
        report = json.loads((out / REPORT).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return report if isinstance(report, dict) else None


def _plot(path: Path, log: list[dict[str, Any]]) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import MaxNLocator

    steps = [r for r in log if "loss" in r]
    vals = [r for r in log if "val_loss" in r]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], ".-" if len(steps) < 50 else "-",
            label="train loss (per step)")
    if vals:
        ax.plot([r["step"] for r in vals], [r["val_loss"] for r in vals], "o--", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cross-entropy on answer tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def _micro_batches(n: int, config: TrainConfig) -> tuple[int, Callable[[int], list[int]]]:
    """(total micro-batches, micro-batch index -> sample indices); each epoch is a fresh seeded shuffle."""
    per_epoch = math.ceil(n / config.batch_size)
    total = max(1, math.ceil(config.epochs * per_epoch))
    orders: dict[int, list[int]] = {}

    def samples(m: int) -> list[int]:
        epoch, pos = divmod(m, per_epoch)
        if epoch not in orders:
            order = list(range(n))
            derive_rng(config.seed, "epoch", epoch).shuffle(order)
            orders[epoch] = order
        return orders[epoch][pos * config.batch_size: (pos + 1) * config.batch_size]

    return total, samples


def _step_seed(seed: int, step: int) -> int:
    return derive_rng(seed, "step", step).getrandbits(63)


def train(dataset: Path, out: Path, config: TrainConfig | None = None, *, resume: bool = True,
          progress: bool = True, on_step: Callable[[dict[str, Any]], None] | None = None,
          command: str | None = None, cache_dir: Path | None = None) -> dict[str, Any]:
    """Fine-tune the base model with LoRA on the dataset's train split; write OUT; return the report.

    Re-running with the same arguments resumes from the newest checkpoint (or returns the finished report).
    `on_step` is called after every optimizer step (and its checkpoint) with the step's log line. The
    report's `run` records this session (`command`, default this process's command line; seed; start and
    end times; duration; peak memory); `seconds` counts the training steps of every session. `cache_dir` is the
    model cache a GGUF base is converted into (the setting cache_dir; not part of the run's identity).
    """
    import torch

    config = config or TrainConfig()
    session = Session(config.seed, command)
    out = Path(out)
    train_ex, val_ex, data_info = load_examples(dataset, config)
    model_dir, base_id = resolve_base(config.base, cache_dir)
    identity = {**config.identity(), "base_model": base_id, "train_samples": len(train_ex),
                "train_fingerprint": fingerprint(train_ex)}
    with _out_lock(out):
        _check_out(out, identity)
        if resume and (report := _finished_report(out)) is not None:
            return {**report, "already_trained": True}
        if not resume:
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            for name in (LOG, REPORT, PLOT):
                (out / name).unlink(missing_ok=True)

        threads_before = torch.get_num_threads()
        torch.set_num_threads(config.threads or _available_cpus())
        try:
            report = _run(out, config, model_dir, base_id, train_ex, val_ex, data_info, progress, on_step)
            report["run"] = session.finish()
            write_json_atomic(out / REPORT, report)
            return report
        finally:
            torch.set_num_threads(threads_before)


def _run(out: Path, config: TrainConfig, model_dir: Path, base_id: str, train_ex: list[Example],
         val_ex: list[Example], data_info: dict[str, Any], progress: bool,
         on_step: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """One training session in OUT (its lock held): resume, train the remaining steps, save, report."""
    import torch

    run_started = time.perf_counter()
    for junk in [*out.glob(".*.tmp-*"), *out.glob(".*.old-*"), *(out / CHECKPOINTS).glob(".step-*")]:
        shutil.rmtree(junk, ignore_errors=True)  # left by a killed run
    model, tokenizer = load_base(model_dir)
    encoded, val_enc = _encode(tokenizer, train_ex, val_ex, config)
    pad_id = tokenizer.pad_token_id
    model, targets = add_lora(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    total_micro, _ = _micro_batches(len(encoded), config)
    total_steps = math.ceil(total_micro / config.grad_accum)
    resumed = _resume(out, model, optimizer)
    if val_enc and resumed.step == 0:
        _log_row(out, resumed.log, {"step": 0, "val_loss": mean_loss(model, val_enc, pad_id, config.dtype)})

    model.train()
    train_seconds = _train_steps(out, model, optimizer, params, encoded, pad_id, config, resumed, progress, on_step)
    val_after = None
    if val_enc:
        val_after = mean_loss(model, val_enc, pad_id, config.dtype)
        _log_row(out, resumed.log, {"step": total_steps, "val_loss": val_after})
    _save_adapter(out, model, config, model_dir)
    _save_merged(out, model, tokenizer, config)
    _plot(out / PLOT, resumed.log)
    return _report(out, config, base_id, model_dir, data_info, targets=targets,
                   trainable=sum(p.numel() for p in params), encoded=encoded, skipped=len(train_ex) - len(encoded),
                   validation_samples=len(val_enc), steps=total_steps, resumed=resumed, train_seconds=train_seconds,
                   session_seconds=time.perf_counter() - run_started, val_after=val_after)


def _encode(tokenizer: Any, train_ex: list[Example], val_ex: list[Example],
            config: TrainConfig) -> tuple[list[Any], list[Any]]:
    """The training and validation examples as token ids (ChatEncoder), those over `max_length` left out.

    :raises RagError: no training example fits in `max_length` tokens.
    """
    encoder = ChatEncoder(tokenizer, config.max_length, config.seed)
    encoded = [e for e in (encoder.encode(x) for x in train_ex) if e is not None]
    if not encoded:
        raise RagError(f"no training sample fits in --max-length {config.max_length} tokens (the question and "
                       "answer alone are longer): raise --max-length")
    return encoded, [e for e in (encoder.encode(x) for x in val_ex) if e is not None]


@dataclass
class _Resumed:
    """Where a session starts: the last checkpoint's step (0: none), the training seconds before it, the log
    rows kept (steps up to it and the validation loss before training), the damaged log lines moved aside."""

    step: int
    seconds: float
    from_step: int | None
    log: list[dict[str, Any]]
    damaged: int


def _resume(out: Path, model: Any, optimizer: Any) -> _Resumed:
    """Load the newest checkpoint into `model` and `optimizer`, and cut the log back to it (rewritten atomically;
    damaged lines moved to train_log.jsonl.damaged)."""
    step, seconds, from_step = 0, 0.0, None
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer)
        step = from_step = int(state["step"])
        seconds = float(state.get("seconds", 0.0))
    repaired = repair_jsonl(out / LOG)
    log = [r for r in repaired.rows if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step
           and ("loss" in r or r.get("step") == 0)]
    write_text_atomic(out / LOG, "".join(json.dumps(r) + "\n" for r in log))
    return _Resumed(step, seconds, from_step, log, len(repaired.damaged))


def _log_row(out: Path, log: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Append `row` to OUT's train log (fsynced) and to `log`."""
    append_jsonl(out / LOG, [row])
    log.append(row)


def _train_steps(out: Path, model: Any, optimizer: Any, params: list[Any], encoded: list[Any], pad_id: int,
                 config: TrainConfig, resumed: _Resumed, progress: bool,
                 on_step: Callable[[dict[str, Any]], None] | None) -> float:
    """The optimizer steps after `resumed.step`: each logged, checkpointed every `save_steps` and at the end.

    :returns: the training seconds of every session so far.
    """
    import torch
    from rag.common.progress import progress_bar

    total_micro, samples_of = _micro_batches(len(encoded), config)
    total_steps = math.ceil(total_micro / config.grad_accum)
    started = time.perf_counter()
    bar = progress_bar(total=total_micro, initial=min(resumed.step * config.grad_accum, total_micro),
                       enabled=progress, desc="raft train", unit="sample" if config.batch_size == 1 else "batch")
    last = next((r for r in reversed(resumed.log) if "loss" in r), None)
    if last:
        bar.set_postfix(step=f"{resumed.step}/{total_steps}", loss=f"{last['loss']:.3f}")
    try:
        for step in range(resumed.step + 1, total_steps + 1):
            torch.manual_seed(_step_seed(config.seed, step))  # LoRA dropout: the same after a resume
            lr = lr_at(step, total_steps, config.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = [[encoded[i] for i in samples_of(m)]
                       for m in range((step - 1) * config.grad_accum, min(step * config.grad_accum, total_micro))]
            n_tokens = sum(answer_tokens(e) for b in batches for e in b)
            step_loss = 0.0
            for b in batches:
                s, _ = loss_sum(model, collate(b, pad_id), config.dtype)
                (s / n_tokens).backward()  # token-weighted mean over the whole accumulation window
                step_loss += s.detach().item()
                bar.update(1)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = resumed.seconds + time.perf_counter() - started
            row = {"step": step, "loss": step_loss / n_tokens, "lr": lr, "grad_norm": grad_norm,
                   "samples": sum(len(b) for b in batches), "tokens": n_tokens, "seconds": round(seconds, 2)}
            _log_row(out, resumed.log, row)
            bar.set_postfix(step=f"{step}/{total_steps}", loss=f"{row['loss']:.3f}")
            if step % config.save_steps == 0 or step == total_steps:
                save_checkpoint(out, step, model, optimizer, {"seconds": seconds})
            if on_step is not None:
                on_step(row)
    finally:
        bar.close()
    return resumed.seconds + time.perf_counter() - started


def _save_adapter(out: Path, model: Any, config: TrainConfig, model_dir: Path) -> None:
    """OUT/adapter: the LoRA weights and ADAPTER_INFO, so `rag ask --model OUT/adapter` merges it onto this base
    (rag.generation.adapter); written in a temp folder renamed into place."""
    from rag.generation.adapter import ADAPTER_INFO
    from rag.generation.spec import resolve_model

    tmp = out / f".{ADAPTER}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        # peft's own record of the base is this machine's cache path
        portable = resolve_model(config.base).kind in ("bundled", "teacher")  # a keyword, not a path
        write_json_atomic(tmp / ADAPTER_INFO, {"base": config.base if portable else str(model_dir.resolve()),
                                               "prompt_format": "raft",
                                               "method": config.method, "written_by": "raft train"})
        replace_dir(tmp, out / ADAPTER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_merged(out: Path, model: Any, tokenizer: Any, config: TrainConfig) -> None:
    """OUT/merged: the base with the LoRA merged in, its tokenizer and prompt format; written in a temp folder
    renamed into place.

    :raises RagError: the saved folder is incomplete (a full disk).
    """
    from rag.generation.models import PROMPT_FORMAT_FILE, is_valid_model_cache

    merged = model.merge_and_unload()
    tmp = out / f".{MERGED}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # rag asks the model in the conversation it was tuned on (DSF too: DSF + RAG shows it the documents)
        write_json_atomic(tmp / PROMPT_FORMAT_FILE, {"prompt_format": "raft", "method": config.method,
                                                     "written_by": "raft train"})
        if not is_valid_model_cache(tmp):
            raise RagError(f"saving the merged model produced an incomplete folder {tmp}: check free disk space")
        replace_dir(tmp, out / MERGED)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _report(out: Path, config: TrainConfig, base_id: str, model_dir: Path, data_info: dict[str, Any], *,
            targets: list[str], trainable: int, encoded: list[Any], skipped: int, validation_samples: int,
            steps: int, resumed: _Resumed, train_seconds: float, session_seconds: float,
            val_after: float | None) -> dict[str, Any]:
    """The run's report (report.json, written by `train` with the session's record)."""
    import peft
    import torch
    import transformers

    log = resumed.log
    step_rows = [r for r in log if "loss" in r]
    samples_seen = sum(r["samples"] for r in step_rows)
    lengths = [len(e.input_ids) for e in encoded]
    untruncated = [e.untruncated_length for e in encoded]
    val_before = next((r["val_loss"] for r in log if "val_loss" in r and r["step"] == 0), None)
    return {
        "dataset": data_info,
        "out": str(out),
        "base_model": base_id,
        "base_dir": str(model_dir),
        "args": config.model_dump(),
        "method": config.method,
        "target_modules": targets,
        "trainable_params": trainable,
        "samples": len(encoded),
        "skipped_too_long": skipped,
        "truncated": sum(e.truncated for e in encoded),
        "docs_dropped": sum(e.docs_dropped for e in encoded),
        "docs_cut": sum(e.docs_cut for e in encoded),
        "tokens_per_sample": {"mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths),
                              "mean_before_truncation": round(sum(untruncated) / len(untruncated), 1),
                              "answer_mean": round(sum(answer_tokens(e) for e in encoded) / len(encoded), 1)},
        "validation_samples": validation_samples,
        "steps": steps,
        "epochs": config.epochs,
        "samples_seen": samples_seen,
        "resumed_from_step": resumed.from_step,
        "log_damaged_lines": resumed.damaged,  # moved to train_log.jsonl.damaged on resume
        "seconds": round(train_seconds, 1),  # the training steps, over all resumed sessions
        "seconds_this_session": round(session_seconds, 1),  # + loading, validation, saving
        "seconds_per_sample": round(train_seconds / max(samples_seen, 1), 2),
        "samples_per_second": round(samples_seen / max(train_seconds, 1e-9), 4),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "initial_loss": step_rows[0]["loss"] if step_rows else None,
        "final_loss": step_rows[-1]["loss"] if step_rows else None,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "files": {"adapter": str(out / ADAPTER), "merged": str(out / MERGED), "loss_plot": str(out / PLOT),
                  "log": str(out / LOG)},
    }
