"""LoRA fine-tuning of the generator on a RAFT dataset (`raft train`): train split only, answer tokens only.

Data: a `raft generate` folder (dataset.jsonl; its TRAIN split from raft.export.split_by_chunk, the same
function and defaults `raft eval` uses, so the held-out test chunks are never trained on), or a
`raft export --format chat` folder/file (messages column; its own train/validation files). Each sample is
raft.prompts.student_messages(documents, question) as the user turn and the CoT answer as the assistant
turn, rendered with the base model's chat template. Only the answer tokens, up to and including the
template's end-of-turn token, carry loss; the prompt is labelled -100. A sample longer than --max-length
loses documents first, never answer tokens: randomly chosen distractors are dropped (the oracle stays,
every shown document stays whole), and only if the oracle alone is still too long are the documents'
tails cut. Samples whose question + answer alone don't fit are skipped. All of it is counted in the report.

Why a plain torch loop rather than TRL's SFTTrainer or transformers.Trainer: TRL is not installed (and
would only add a dependency for what is ~100 lines here); Trainer checkpoints pickle their optimizer,
scheduler and RNG state (torch.save, RNG reloaded with weights_only=False), and this project never
pickles. This loop checkpoints as safetensors + JSON, resumes exactly (the sample order and the LoRA
dropout RNG derive from (seed, step)), and projects onto the 49k-word vocabulary only at answer
positions (`logits_to_keep`), which removes most of the lm_head cost on CPU.

LoRA targets the attention and MLP projections of the llama-architecture SmolLM2 (q,k,v,o,gate,up,down):
the usual choice for small models, 2.4 M trainable parameters at r=8 (1.8% of 135 M).

CPU defaults, measured on the shared 2-core AVX512 machine (load 5-7 from other jobs) with RAFT-shaped
samples of the shipped course (5 chunks, ~1,210 SmolLM tokens untruncated, ~120 answer tokens): a
float32 training sample costs ~29 ms per token (paired runs: 638 tokens 17 s, 914 tokens 27 s, 1,213
tokens 40 s; peak RSS 4.8-6.2 GB). --max-length 1024 keeps the oracle and ~2.5 of 4 distractors for
~2/3 of the full cost. bfloat16 autocast was 1.6-1.9x faster but learned less over the same 4 steps
(validation loss 2.76 -> 2.72 against 2.65 in float32), so float32 is the default. 2 threads, with
OMP_WAIT_POLICY=PASSIVE set by the CLI: busy-waiting OpenMP threads crawl when the cores are shared.

Output folder OUT:
  train_config.json        the arguments that decide the model (+ dataset fingerprint); others are refused
  checkpoints/step-N/      adapter.safetensors, optimizer.safetensors, state.json (the newest two are kept)
  train_log.jsonl          one line per optimizer step (step, loss, lr, ...) and the validation losses
  adapter/                 the peft adapter (adapter_config.json + adapter_model.safetensors)
  merged/                  the merged full model (config, model.safetensors, tokenizer, generation_config)
  loss.png, train_report.json
  .lock                    held while a run writes OUT (a second run on the same OUT is refused)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import resource
import shutil
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rag.atomic import fsync_dir, fsync_path, write_json_atomic, write_text_atomic
from rag.errors import RagError
from raft.dataset import DATASET, _differences, derive_rng, read_jsonl
from raft.export import parse_split, split_by_chunk
from raft.prompts import BEGIN_QUOTE, END_QUOTE, instruction, student_messages

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG = "train_config.json"
REPORT = "train_report.json"
LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MERGED = "merged"
PLOT = "loss.png"
DTYPES = ("float32", "bfloat16")
KEEP_CHECKPOINTS = 2
MAX_GRAD_NORM = 1.0
WARMUP_FRACTION = 0.1
_NOT_IDENTITY = ("save_steps", "threads")  # change how the run goes, not the model it makes


@dataclass
class TrainConfig:
    """The settings of one `raft train` run (CLI flags map 1:1)."""

    base: str = "bundled"
    epochs: float = 1.0
    lr: float = 2e-4
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    batch_size: int = 1
    grad_accum: int = 8
    max_length: int = 1024
    max_samples: int | None = None
    split: str = "0.8,0.1,0.1"
    seed: int = 0
    dtype: str = "float32"
    max_val_samples: int = 32
    save_steps: int = 10
    threads: int | None = None

    def validate(self) -> None:
        """Raise RagError naming the first out-of-range setting."""
        problems = [
            (self.epochs <= 0, f"--epochs must be > 0, got {self.epochs}"),
            (self.lr <= 0, f"--lr must be > 0, got {self.lr}"),
            (self.lora_r < 1, f"--lora-r must be >= 1, got {self.lora_r}"),
            (self.lora_alpha <= 0, f"--lora-alpha must be > 0, got {self.lora_alpha}"),
            (not 0 <= self.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {self.lora_dropout}"),
            (self.batch_size < 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.grad_accum < 1, f"--grad-accum must be >= 1, got {self.grad_accum}"),
            (self.max_length < 32, f"--max-length must be >= 32 tokens, got {self.max_length}"),
            (self.max_samples is not None and self.max_samples < 1,
             f"--max-samples must be >= 1, got {self.max_samples}"),
            (self.dtype not in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.max_val_samples < 0, f"--max-val-samples must be >= 0, got {self.max_val_samples}"),
            (self.save_steps < 1, f"--save-steps must be >= 1, got {self.save_steps}"),
            (self.threads is not None and self.threads < 1, f"--threads must be >= 1, got {self.threads}"),
        ]
        for bad, message in problems:
            if bad:
                raise RagError(message)
        parse_split(self.split)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained model (a re-run must match them to resume)."""
        d = asdict(self)
        for k in _NOT_IDENTITY:
            d.pop(k)
        if d["base"] != "bundled":
            d["base"] = str(Path(d["base"]).expanduser().resolve())
        return d


# --------------------------------------------------------------------------------------------- data


@dataclass
class Example:
    """One training conversation: documents + question in, CoT answer out."""

    id: str
    docs: list[str]
    question: str
    answer: str
    oracle_index: int = -1  # position of the oracle among docs; -1 when absent or unknown
    system: str | None = None


_DOC = re.compile(r"<DOCUMENT>(.*?)</DOCUMENT>\n", re.S)
_QUOTE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.S)


def _from_record(rec: dict, where: str) -> Example:
    try:
        docs = list(rec["context"]["sentences"])
        ex = Example(str(rec["id"]), docs, str(rec["question"]), str(rec["cot_answer"]))
    except (KeyError, TypeError):
        raise RagError(f"{where} is not a RAFT sample (needs id, question, context.sentences, cot_answer): "
                       "point at a `raft generate` output folder") from None
    if rec.get("oracle_present") and isinstance(rec.get("oracle_index"), int) and 0 <= rec["oracle_index"] < len(docs):
        ex.oracle_index = rec["oracle_index"]
    return ex


def _norm(text: str) -> str:
    return " ".join(text.split())


def _from_chat(row: dict, where: str) -> Example:
    messages = row.get("messages") if isinstance(row, dict) else None
    try:
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        ui = next(i for i, m in enumerate(messages) if m["role"] == "user")
        user = str(messages[ui]["content"])
        answer = str(next(m["content"] for m in messages[ui + 1:] if m["role"] == "assistant"))
    except (TypeError, KeyError, StopIteration):
        raise RagError(f"{where} is not a chat sample (needs messages with a user and an assistant turn): "
                       "export it with `raft export --format chat`") from None
    docs, pos = [], 0
    while (m := _DOC.match(user, pos)) is not None:
        docs.append(m.group(1))
        pos = m.end()
    question = user[pos:]
    if not docs or instruction(docs, question) != user:
        docs, question = [], user
    ex = Example(str(row.get("id", where)), docs, question, answer, system=system)
    quote = _QUOTE.search(answer)
    if quote and _norm(quote.group(1)):
        q = _norm(quote.group(1))
        ex.oracle_index = next((i for i, d in enumerate(docs) if q in _norm(d)), -1)
    return ex


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
            raise RagError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    return read_jsonl(path)


def _chat_file(folder: Path, split: str) -> Path | None:
    return next((p for p in (folder / f"{split}.jsonl", folder / f"{split}.parquet") if p.is_file()), None)


def _sample(items: list, n: int | None, seed: int, what: str) -> list:
    """At most `n` items, a seeded choice kept in the original order."""
    if n is None or n >= len(items):
        return items
    keep = sorted(derive_rng(seed, what).sample(range(len(items)), n))
    return [items[i] for i in keep]


def load_examples(dataset: Path, config: TrainConfig) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """(train, validation, info) from a `raft generate` folder or a `raft export --format chat` folder/file."""
    path = Path(dataset)
    if not path.exists():
        raise RagError(f"no dataset at {path}: run `raft generate FOLDER --out {path}` first")
    if (path.is_dir() and (path / DATASET).is_file()) or (path.is_file() and path.name == DATASET):
        source = path / DATASET if path.is_dir() else path
        records = read_jsonl(source)
        if not records:
            raise RagError(f"{source} has no samples: run or finish `raft generate` first")
        examples = [_from_record(r, f"line {i + 1} of {source}") for i, r in enumerate(records)]
        by_id = {id(r): e for r, e in zip(records, examples)}
        parts = split_by_chunk(records, parse_split(config.split), config.seed)
        train = [by_id[id(r)] for r in parts["train"]]
        val = [by_id[id(r)] for r in parts.get("validation", [])]
        info = {"format": "raft", "source": str(source), "records": len(records), "split": config.split}
    elif path.is_dir() and (train_file := _chat_file(path, "train")) is not None:
        train = [_from_chat(r, f"row {i + 1} of {train_file}") for i, r in enumerate(_read_rows(train_file))]
        val_file = _chat_file(path, "validation")
        val_rows = _read_rows(val_file) if val_file else []
        val = [_from_chat(r, f"row {i + 1} of {val_file}") for i, r in enumerate(val_rows)]
        info = {"format": "chat", "source": str(train_file), "records": len(train) + len(val),
                "split": "from the export (--split ignored)"}
    elif path.is_file() and path.suffix in (".jsonl", ".parquet"):
        train = [_from_chat(r, f"row {i + 1} of {path}") for i, r in enumerate(_read_rows(path))]
        val = []
        info = {"format": "chat", "source": str(path), "records": len(train), "split": "whole file (--split ignored)"}
    else:
        raise RagError(f"no {DATASET} (from `raft generate`) or train.jsonl/train.parquet (from `raft export "
                       f"--format chat`) in {path}")
    if not train:
        raise RagError(f"the train split of {info['source']} is empty ({info['records']} samples, split "
                       f"{info['split']}): generate more samples or change --split")
    train = _sample(train, config.max_samples, config.seed, "max-samples")
    val = _sample(val, config.max_val_samples, config.seed, "max-val-samples")
    info.update(train=len(train), validation=len(val))
    return train, val, info


def fingerprint(examples: list[Example]) -> str:
    """A short hash of the training conversations (a resumed run must see the same data)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.id, e.docs, e.question, e.answer, e.system], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------------------- tokens


@dataclass
class Encoded:
    """Token ids and labels of one conversation (labels -100 on the prompt)."""

    input_ids: list[int]
    labels: list[int]
    docs_dropped: int = 0
    docs_cut: bool = False
    untruncated_length: int = 0  # tokens before documents were dropped or cut

    @property
    def truncated(self) -> bool:
        """Whether the prompt lost documents or document text to fit --max-length."""
        return self.docs_dropped > 0 or self.docs_cut


class ChatEncoder:
    """Render examples with the model's chat template; label the answer through the end-of-turn token."""

    def __init__(self, tokenizer: Any, max_length: int, seed: int = 0) -> None:
        self.tok, self.max_length, self.seed = tokenizer, max_length, seed
        self.special = set(tokenizer.all_special_ids)

    def _ids(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        out = self.tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                           return_dict=True)
        return list(out["input_ids"])

    def _prompt(self, ex: Example, docs: list[str]) -> list[int]:
        return self._ids(student_messages(docs, ex.question, ex.system), True)

    def answer_ids(self, ex: Example) -> list[int]:
        """The assistant turn's tokens as the template renders them, ending with its end-of-turn token."""
        messages = student_messages(ex.docs, ex.question, ex.system)
        prompt = self._ids(messages, True)
        full = self._ids(messages + [{"role": "assistant", "content": ex.answer}], False)
        if full[: len(prompt)] != prompt:
            raise RagError("the base model's chat template does not render the prompt as the start of the "
                           "conversation, so the answer tokens cannot be found: use another --base")
        tail = full[len(prompt):]
        end = next((i for i, t in enumerate(tail) if t in self.special), None)
        if end is None:  # a template without an end-of-turn marker: teach the model to stop with EOS
            return tail + [self.tok.eos_token_id]
        return tail[: end + 1]  # what follows the end-of-turn token (a newline) is never generated

    def encode(self, ex: Example) -> Encoded | None:
        """Token ids + labels within max_length, losing documents (never answer tokens); None if it can't fit."""
        answer = self.answer_ids(ex)
        room = self.max_length - len(answer)
        docs, oracle = list(ex.docs), ex.oracle_index
        prompt = self._prompt(ex, docs)
        untruncated = len(prompt) + len(answer)
        dropped, cut = 0, False
        rng = derive_rng(self.seed, "truncate", ex.id)
        while len(prompt) > room and len(docs) > 1:
            candidates = [i for i in range(len(docs)) if i != oracle]
            if not candidates:
                break
            i = rng.choice(candidates)
            docs.pop(i)
            if oracle > i:
                oracle -= 1
            dropped += 1
            prompt = self._prompt(ex, docs)
        for attempt in range(6):
            if len(prompt) <= room or not docs:
                break
            cut = True
            pieces = [self.tok(d, add_special_tokens=False)["input_ids"] for d in docs]
            excess = len(prompt) - room + 4 * attempt  # re-tokenising a cut text can shift a token or two
            cap = max(len(p) for p in pieces)
            while cap > 0 and sum(max(0, len(p) - cap) for p in pieces) < excess:
                cap -= 1
            if cap == 0:
                return None
            docs = [self.tok.decode(p[:cap]) for p in pieces]
            prompt = self._prompt(ex, docs)
        if len(prompt) > room:
            return None
        return Encoded(prompt + answer, [-100] * len(prompt) + answer, dropped, cut, untruncated)


def collate(batch: list[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def answer_tokens(e: Encoded) -> int:
    """Tokens that carry loss (labels shifted by one: the first token is never a target)."""
    return sum(1 for t in e.labels[1:] if t != -100)


def loss_sum(model: Any, batch: dict[str, Any], dtype: str = "float32") -> tuple[Any, int]:
    """Summed next-token cross-entropy over the answer tokens of `batch`, and how many there are.

    Logits are computed only at positions whose next token is labelled (`logits_to_keep`).
    """
    import torch
    import torch.nn.functional as F

    target = batch["labels"][:, 1:]
    keep = (target != -100).any(dim=0).nonzero().squeeze(1)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    with autocast:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
                    use_cache=False)
    logits = out.logits.float()
    gold = target[:, keep]
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), gold.reshape(-1), ignore_index=-100, reduction="sum")
    return total, int((gold != -100).sum())


def mean_loss(model: Any, encoded: list[Encoded], pad_id: int, dtype: str = "float32", batch_size: int = 1) -> float:
    """Token-averaged answer loss of `model` on `encoded` (no gradients, eval mode restored afterwards)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(encoded), batch_size):
                s, n = loss_sum(model, collate(encoded[i: i + batch_size], pad_id), dtype)
                total, count = total + float(s), count + n
    finally:
        model.train(was_training)
    return total / max(count, 1)


# --------------------------------------------------------------------------------------------- model


def resolve_base(base: str) -> tuple[Path, str]:
    """(transformers model folder, model id) of --base: bundled, a model folder, a .gguf file or a `raft train` OUT."""
    from rag.generate import BUNDLED_MODEL_ID, bundled_gguf_path, convert_gguf

    if base == "bundled":
        return convert_gguf(bundled_gguf_path()), BUNDLED_MODEL_ID
    path = Path(base).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return convert_gguf(path), str(path)
    if (path / "config.json").is_file():
        return path, str(path)
    if (path / MERGED / "config.json").is_file():
        return path / MERGED, str(path / MERGED)
    raise RagError(f"--base {base}: no model there: use bundled, a transformers model folder (with config.json) "
                   "or a .gguf file")


def load_base(model_dir: Path) -> tuple[Any, Any]:
    """A fresh float32 copy of the base model (never the shared inference cache: peft edits it) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise RagError(f"cannot load the base model in {model_dir}: {type(e).__name__}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise RagError(f"the base model in {model_dir} has no chat template: use an instruct/chat model as --base")
    return model, tokenizer


def add_lora(model: Any, config: TrainConfig) -> tuple[Any, list[str]]:
    """Wrap `model` with LoRA on its attention + MLP projections (peft's default targets for other architectures)."""
    import torch
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in TARGET_MODULES if t in names] or None
    torch.manual_seed(config.seed)  # LoRA A initialisation (B starts at zero)
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, LoraConfig(
                r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=targets, bias="none", task_type="CAUSAL_LM"))
    except ValueError as e:
        raise RagError(f"cannot add LoRA to this base model: {e}") from None
    used = sorted(peft_model.peft_config["default"].target_modules)
    return peft_model, used


def lr_at(step: int, total: int, lr: float) -> float:
    """Linear warm-up over the first 10% of steps (at least one), then linear decay (last step > 0)."""
    warm = max(1, math.ceil(WARMUP_FRACTION * total))
    if step <= warm:
        return lr * step / warm
    return lr * (total - step + 1) / (total - warm + 1)


# --------------------------------------------------------------------------------------- checkpoints


def _replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` at `final` (an old `final` is moved aside first, then removed)."""
    for f in tmp.iterdir():
        if f.is_file():
            fsync_path(f)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(out: Path, step: int, model: Any, optimizer: Any, state: dict[str, Any]) -> Path:
    """OUT/checkpoints/step-N: LoRA weights + AdamW state as safetensors, the rest as JSON; atomic."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step-{step:06d}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()},
                  str(tmp / "adapter.safetensors"))
        opt = optimizer.state_dict()
        tensors = {f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
                   for i, s in opt["state"].items() for k, v in s.items()}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "step": step, "param_groups": opt["param_groups"]})
        _replace_dir(tmp, root / f"step-{step:06d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return root / f"step-{step:06d}"


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder of OUT, if any."""
    done = [p for p in sorted((out / CHECKPOINTS).glob("step-*")) if (p / "state.json").is_file()]
    return done[-1] if done else None


def load_checkpoint(path: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore LoRA weights and optimizer state from a checkpoint folder; return its state.json."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        set_peft_model_state_dict(model, load_file(str(path / "adapter.safetensors")))
        opt_state: dict[int, dict[str, Any]] = {}
        for key, value in load_file(str(path / "optimizer.safetensors")).items():
            i, name = key.split(".", 1)
            opt_state.setdefault(int(i), {})[name] = value
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint: say which
        raise RagError(f"the checkpoint {path} is damaged ({type(e).__name__}: {e}): delete it to resume "
                       "from the one before, or use --no-resume") from None
    return state


# ------------------------------------------------------------------------------------------- the run


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _out_lock(out: Path) -> Iterator[None]:
    """One `raft train` at a time per output folder (creates the folder)."""
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / ".lock", "w")
    except OSError as e:
        raise RagError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RagError(f"another `raft train` is writing {out}: wait for it to finish, "
                           "or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_out(out: Path, identity: dict[str, Any]) -> None:
    """Create OUT with its train_config.json, or check that an existing one was made with the same arguments."""
    cfg = out / CONFIG
    if cfg.is_file():
        try:
            old = json.loads(cfg.read_text(encoding="utf-8"))
        except ValueError:
            raise RagError(f"{cfg} is damaged: delete the folder {out} or use another --out") from None
        diffs = _differences(old, identity)
        if diffs:
            raise RagError(f"{out} holds a training run made with other arguments ({'; '.join(diffs)}): "
                           "use the same arguments to resume, or another --out")
        return
    leftovers = [n for n in (CHECKPOINTS, ADAPTER, MERGED, LOG, REPORT) if (out / n).exists()]
    if leftovers:
        raise RagError(f"{out} has {leftovers[0]} but no {CONFIG}: use an empty folder for --out")
    write_json_atomic(cfg, identity)


def _append_log(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


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
          progress: bool = True, on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fine-tune the base model with LoRA on the dataset's train split; write OUT; return the report.

    Re-running with the same arguments resumes from the newest checkpoint (or returns the finished report).
    `on_step` is called after every optimizer step (and its checkpoint) with the step's log line.
    """
    import torch

    config = config or TrainConfig()
    config.validate()
    out = Path(out)
    train_ex, val_ex, data_info = load_examples(dataset, config)
    model_dir, base_id = resolve_base(config.base)
    identity = {**config.identity(), "base_model": base_id, "train_samples": len(train_ex),
                "train_fingerprint": fingerprint(train_ex)}
    with _out_lock(out):
        _check_out(out, identity)
        if resume and (out / REPORT).is_file() and (out / MERGED / "config.json").is_file():
            report = json.loads((out / REPORT).read_text(encoding="utf-8"))
            return {**report, "already_trained": True}
        if not resume:
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            for name in (LOG, REPORT, PLOT):
                (out / name).unlink(missing_ok=True)

        threads_before = torch.get_num_threads()
        torch.set_num_threads(config.threads or _available_cpus())
        try:
            return _run(out, config, model_dir, base_id, train_ex, val_ex, data_info, progress, on_step)
        finally:
            torch.set_num_threads(threads_before)


def _run(out: Path, config: TrainConfig, model_dir: Path, base_id: str, train_ex: list[Example],
         val_ex: list[Example], data_info: dict[str, Any], progress: bool,
         on_step: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from rag.generate import is_valid_model_cache

    run_started = time.perf_counter()
    for junk in [*out.glob(".*.tmp-*"), *out.glob(".*.old-*"), *(out / CHECKPOINTS).glob(".step-*")]:
        shutil.rmtree(junk, ignore_errors=True)  # left by a killed run
    model, tokenizer = load_base(model_dir)
    encoder = ChatEncoder(tokenizer, config.max_length, config.seed)
    encoded = [e for e in (encoder.encode(x) for x in train_ex) if e is not None]
    skipped = len(train_ex) - len(encoded)
    if not encoded:
        raise RagError(f"no training sample fits in --max-length {config.max_length} tokens (the question and "
                       "answer alone are longer): raise --max-length")
    val_enc = [e for e in (encoder.encode(x) for x in val_ex) if e is not None]
    pad_id = tokenizer.pad_token_id
    model, targets = add_lora(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)

    total_micro, samples_of = _micro_batches(len(encoded), config)
    total_steps = math.ceil(total_micro / config.grad_accum)
    log_path = out / LOG
    start_step, elapsed_before, resumed_from = 0, 0.0, None
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer)
        start_step = resumed_from = int(state["step"])
        elapsed_before = float(state.get("seconds", 0.0))
    # keep the steps up to the checkpoint and the validation loss before training; drop the rest
    log = [r for r in read_jsonl(log_path) if r.get("step", 0) <= start_step and ("loss" in r or r.get("step") == 0)]
    write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in log))

    if val_enc and start_step == 0:
        row = {"step": 0, "val_loss": mean_loss(model, val_enc, pad_id, config.dtype)}
        _append_log(log_path, row)
        log.append(row)

    model.train()
    started = time.perf_counter()
    bar = tqdm(total=total_micro, initial=min(start_step * config.grad_accum, total_micro), disable=not progress,
               desc="raft train", unit="sample" if config.batch_size == 1 else "batch", dynamic_ncols=True)
    last = next((r for r in reversed(log) if "loss" in r), None)
    if last:
        bar.set_postfix(step=f"{start_step}/{total_steps}", loss=f"{last['loss']:.3f}")
    try:
        for step in range(start_step + 1, total_steps + 1):
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
            seconds = elapsed_before + time.perf_counter() - started
            row = {"step": step, "loss": step_loss / n_tokens, "lr": lr, "grad_norm": grad_norm,
                   "samples": sum(len(b) for b in batches), "tokens": n_tokens, "seconds": round(seconds, 2)}
            _append_log(log_path, row)
            log.append(row)
            bar.set_postfix(step=f"{step}/{total_steps}", loss=f"{row['loss']:.3f}")
            if step % config.save_steps == 0 or step == total_steps:
                save_checkpoint(out, step, model, optimizer, {"seconds": seconds})
            if on_step is not None:
                on_step(row)
    finally:
        bar.close()
    train_seconds = elapsed_before + time.perf_counter() - started

    val_after = None
    if val_enc:
        val_after = mean_loss(model, val_enc, pad_id, config.dtype)
        row = {"step": total_steps, "val_loss": val_after}
        _append_log(log_path, row)
        log.append(row)

    tmp = out / f".{ADAPTER}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        _replace_dir(tmp, out / ADAPTER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    merged = model.merge_and_unload()
    tmp = out / f".{MERGED}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not is_valid_model_cache(tmp):
            raise RagError(f"saving the merged model produced an incomplete folder {tmp}: check free disk space")
        _replace_dir(tmp, out / MERGED)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _plot(out / PLOT, log)

    step_rows = [r for r in log if "loss" in r]
    samples_seen = sum(r["samples"] for r in step_rows)
    lengths = [len(e.input_ids) for e in encoded]
    untruncated = [e.untruncated_length for e in encoded]
    val_before = next((r["val_loss"] for r in log if "val_loss" in r and r["step"] == 0), None)
    import peft
    import transformers

    report = {
        "dataset": data_info,
        "out": str(out),
        "base_model": base_id,
        "base_dir": str(model_dir),
        "args": asdict(config),
        "target_modules": targets,
        "trainable_params": sum(p.numel() for p in params),
        "samples": len(encoded),
        "skipped_too_long": skipped,
        "truncated": sum(e.truncated for e in encoded),
        "docs_dropped": sum(e.docs_dropped for e in encoded),
        "docs_cut": sum(e.docs_cut for e in encoded),
        "tokens_per_sample": {"mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths),
                              "mean_before_truncation": round(sum(untruncated) / len(untruncated), 1),
                              "answer_mean": round(sum(answer_tokens(e) for e in encoded) / len(encoded), 1)},
        "validation_samples": len(val_enc),
        "steps": total_steps,
        "epochs": config.epochs,
        "samples_seen": samples_seen,
        "resumed_from_step": resumed_from,
        "seconds": round(train_seconds, 1),  # the training steps, over all resumed sessions
        "seconds_this_session": round(time.perf_counter() - run_started, 1),  # + loading, validation, saving
        "seconds_per_sample": round(train_seconds / max(samples_seen, 1), 2),
        "samples_per_second": round(samples_seen / max(train_seconds, 1e-9), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
        "initial_loss": step_rows[0]["loss"] if step_rows else None,
        "final_loss": step_rows[-1]["loss"] if step_rows else None,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "files": {"adapter": str(out / ADAPTER), "merged": str(out / MERGED), "loss_plot": str(out / PLOT),
                  "log": str(log_path)},
    }
    write_json_atomic(out / REPORT, report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A few human lines about a finished run."""
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = [
        ("already trained (same arguments): " if report.get("already_trained") else "")
        + f"{report['samples']} samples x {report['epochs']:g} epochs = {report['steps']} steps in "
        f"{report['seconds']:.0f} s ({report['seconds_per_sample']:.2f} s/sample, peak RSS "
        f"{report['peak_rss_mb']:.0f} MB, {report['threads']} threads"
        + (f", resumed from step {report['resumed_from_step']})" if report.get("resumed_from_step") else ")"),
        f"train loss {num(report['initial_loss'])} -> {num(report['final_loss'])} (first -> last step); "
        + (f"validation loss {num(report['val_loss_before'])} -> {num(report['val_loss_after'])} "
           f"({report['validation_samples']} samples)" if report["validation_samples"] else "no validation split"),
        f"truncated to --max-length {report['args']['max_length']}: {report['truncated']} samples "
        f"({report['docs_dropped']} distractors dropped, {report['docs_cut']} with cut documents), "
        f"{report['skipped_too_long']} skipped (answer too long)",
        f"-> {report['files']['merged']} (use: rag ask --model {report['files']['merged']} \"...\"), adapter in "
        f"{report['files']['adapter']}, {report['files']['loss_plot']}",
    ]
    return "\n".join(lines)
