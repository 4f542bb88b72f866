"""Training examples from a RAFT dataset or a chat export, and their tokenisation with answer-only labels."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft.prompts import QUOTE, instruction, student_messages
from raft.records import (
    DATASET,
    check_unique_ids,
    derive_rng,
    documents_with_oracle,
    documents_without_oracle,
    load_records,
)
from raft.splits import parse_split, split_by_chunk
from raft.train.config import TrainConfig
from rag.common.runfolder import read_jsonl
from rag.errors import RagError

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
    quote = QUOTE.search(answer)
    if quote and _norm(quote.group(1)):
        q = _norm(quote.group(1))
        ex.oracle_index = next((i for i, d in enumerate(docs) if q in _norm(d)), -1)
    return ex


def _read_rows(path: Path) -> list[dict]:
    """The rows of an exported file (a damaged JSONL line or a duplicate id: RagError naming it)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
            raise RagError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    else:
        rows = read_jsonl(path)
    with_id = [(i + 1, r) for i, r in enumerate(rows) if r.get("id") is not None]
    check_unique_ids([r for _, r in with_id], path, [n for n, _ in with_id], unit="row")
    return rows


def _chat_file(folder: Path, split: str) -> Path | None:
    return next((p for p in (folder / f"{split}.jsonl", folder / f"{split}.parquet") if p.is_file()), None)


def _sample(items: list, n: int | None, seed: int, what: str) -> list:
    """At most `n` items, a seeded choice kept in the original order."""
    if n is None or n >= len(items):
        return items
    keep = sorted(derive_rng(seed, what).sample(range(len(items)), n))
    return [items[i] for i in keep]


def with_oracle_fraction(records: list[dict], fraction: float, seed: int) -> list[dict]:
    """Copies of `records` where exactly round(fraction * n) show their oracle, re-drawn from the stored documents.

    Which records show it is a seeded choice (derive_rng(seed, "oracle-fraction", id)), independent of
    order. A record chosen to show the oracle gets it back in place of one distractor if it had dropped it
    (raft.records.documents_with_oracle, purpose "train-oracle"); one chosen not to loses it (its k
    distractors stay; the generator's extra distractor of a dropped-oracle sample does not exist here).
    """
    ranked = sorted(records, key=lambda r: derive_rng(seed, "oracle-fraction", r["id"]).random())
    keep = {r["id"] for r in ranked[: round(fraction * len(records))]}
    out = []
    for rec in records:
        if rec["id"] in keep:
            docs, at = documents_with_oracle(rec, seed, "train-oracle")
        else:
            docs, at = documents_without_oracle(rec), -1
        titles = list(rec["context"]["title"])
        titles = titles[: len(docs)] + [""] * (len(docs) - len(titles))  # titles are not trained on
        out.append({**rec, "context": {"title": titles, "sentences": docs}, "oracle_present": at >= 0,
                    "oracle_index": at})
    return out


def with_random_distractors(records: list[dict], seed: int) -> list[dict]:
    """Copies of `records` whose distractors are re-drawn uniformly at random from the other source chunks
    of `records` (the "random" arm of the RAFT paper's distractor ablation, without calling the teacher again).

    The pool is the oracle text of every distinct source chunk in `records`; pass one split part at a time
    so that no other part's text enters it. Each record keeps its number of distractors (capped by the
    pool), its oracle (if shown) at the same position, and its question and answer; the draw is
    derive_rng(seed, "random-distractors", id), independent of order.

    :param records: raft records (one split part).
    :param seed: the run's seed.
    :returns: new records; `distractor_ids` holds the drawn chunks' source ids.
    """
    pool: dict[int, str] = {}
    for rec in records:
        pool.setdefault(rec["source_chunk_id"], rec["oracle_context"])
    out = []
    for rec in records:
        shown = rec["oracle_index"] >= 0 and rec["oracle_present"]
        wanted = len(rec["context"]["sentences"]) - (1 if shown else 0)
        others = sorted(i for i, text in pool.items() if i != rec["source_chunk_id"] and text != rec["oracle_context"])
        picked = derive_rng(seed, "random-distractors", rec["id"]).sample(others, min(wanted, len(others)))
        docs = [pool[i] for i in picked]
        at = -1
        if shown:
            at = min(rec["oracle_index"], len(docs))
            docs.insert(at, rec["oracle_context"])
        out.append({**rec, "context": {"title": [""] * len(docs), "sentences": docs}, "oracle_index": at,
                    "oracle_present": shown, "distractor_ids": picked})
    return out


def _as_method(examples: list[Example], method: str) -> list[Example]:
    """DSF (the RAFT paper's domain-specific fine-tuning baseline): the same examples without documents."""
    if method != "dsf":
        return examples
    return [Example(e.id, [], e.question, e.answer, -1, e.system) for e in examples]


def load_examples(dataset: Path, config: TrainConfig) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """(train, validation, info) from a `raft generate` folder or a `raft export --format chat` folder/file.

    --method dsf drops every example's documents; --distractor-strategy random re-draws the distractors
    (`with_random_distractors`); --oracle-fraction re-draws which samples show the oracle (raft datasets only: a chat export does not say which document is the oracle; RagError otherwise).
    """
    path = Path(dataset)
    if not path.exists():
        raise RagError(f"no dataset at {path}: run `raft generate FOLDER --out {path}` first")
    if (path.is_dir() and (path / DATASET).is_file()) or (path.is_file() and path.name == DATASET):
        source = path / DATASET if path.is_dir() else path
        records = load_records(source)  # a damaged line or a duplicate id: refused, naming the line
        if not records:
            raise RagError(f"{source} has no samples: run or finish `raft generate` first")
        where = {r["id"]: f"line {i + 1} of {source}" for i, r in enumerate(records)}  # ids are unique
        parts = split_by_chunk(records, parse_split(config.split), config.seed)
        if config.distractor_strategy == "random":
            parts = {k: with_random_distractors(v, config.seed) for k, v in parts.items()}
        if config.oracle_fraction is not None:
            parts = {k: with_oracle_fraction(v, config.oracle_fraction, config.seed) for k, v in parts.items()}
        train = [_from_record(r, where[r["id"]]) for r in parts["train"]]
        val = [_from_record(r, where[r["id"]]) for r in parts.get("validation", [])]
        info = {"format": "raft", "source": str(source), "records": len(records), "split": config.split}
    elif config.distractor_strategy is not None:
        raise RagError(f"--distractor-strategy needs a `raft generate` folder ({DATASET}); {path} is not one (a "
                       "chat export does not say which document is the oracle)")
    elif config.oracle_fraction is not None:
        raise RagError(f"--oracle-fraction needs a `raft generate` folder ({DATASET}); {path} is not one (a chat "
                       "export does not say which document is the oracle)")
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
    train = _as_method(_sample(train, config.max_samples, config.seed, "max-samples"), config.method)
    val = _as_method(_sample(val, config.max_val_samples, config.seed, "max-val-samples"), config.method)
    info.update(train=len(train), validation=len(val), method=config.method, oracle_fraction=config.oracle_fraction,
                distractor_strategy=config.distractor_strategy,
                train_oracle_shown=round(sum(e.oracle_index >= 0 for e in train) / len(train), 4))
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
