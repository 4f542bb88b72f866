"""RAFT sample records (ARCHITECTURE.md, "RAFT sample record") and the append-only, resumable writer.

Output folder layout:
  run.json        the arguments that decide the data; a restart with other ones is refused
  dataset.jsonl   one sample a line, appended as chunks finish (flushed + fsynced)
  rejected.jsonl  the rejected answers/question lists with their reason and the raw reply
  progress.jsonl  one line per finished chunk (its counts); a chunk is done only once this line is on disk
  stats.json      written after each run
A killed run leaves at most one chunk with samples but no progress line: the next run drops those samples
and redoes the chunk (its sampling decisions come from (seed, chunk id), so they come out the same).
"""

from __future__ import annotations

import json
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from raft.prompts import instruction as make_instruction
from raft.records import (
    DATASET,
    PROGRESS,
    REJECTED,
    RUN,
    _differences,
    read_jsonl,
    title_of,
)
from rag.common.atomic import write_json_atomic, write_text_atomic  # noqa: F401  (write_json_atomic: used by raft.generate)
from rag.errors import RagError


@dataclass
class SamplePlan:
    """The sampling decisions for one question: which documents, in which order, oracle kept or not."""

    docs: list[Any]  # rag Chunks in the order shown
    oracle_present: bool
    oracle_index: int  # position of the oracle among docs, -1 when dropped
    distractor_ids: list[int]


class SampleBuilder:
    """Decide a sample's documents: the oracle with probability p plus k distractors (k+1 without it), shuffled."""

    def __init__(self, index, sampler, k: int = 4, p: float = 0.8) -> None:
        if not 0.0 <= p <= 1.0:
            raise RagError(f"--p must be between 0 and 1, got {p}")
        if k < 0:
            raise RagError(f"--distractors must be >= 0, got {k}")
        self.index, self.sampler, self.k, self.p = index, sampler, k, p

    def plan(self, oracle_pos: int, rng: random.Random, answer: list[str] | None = None) -> SamplePlan:
        """`answer`: the verified quotes; distractors that contain one of them are skipped."""
        present = rng.random() < self.p
        picked = self.sampler(oracle_pos, self.k if present else self.k + 1, rng, answer=answer)
        positions = ([oracle_pos] if present else []) + picked
        rng.shuffle(positions)
        chunks = self.index.chunks
        return SamplePlan([chunks[p] for p in positions], present,
                          positions.index(oracle_pos) if present else -1, [chunks[p].id for p in picked])


def make_record(*, chunk, question: str, qi: int, plan: SamplePlan, answer, model_id: str, seed: int) -> dict:
    """The sample record of ARCHITECTURE.md, plus quote counts."""
    texts = [d.text for d in plan.docs]
    return {
        "id": f"raft-{chunk.id:016x}-{qi}",
        "type": "general",
        "question": question,
        "context": {"title": [title_of(d) for d in plan.docs], "sentences": texts},
        "oracle_context": chunk.text,
        "oracle_present": plan.oracle_present,
        "oracle_index": plan.oracle_index,
        "distractor_ids": plan.distractor_ids,
        "cot_answer": answer.cot_answer,
        "final_answer": answer.final_answer,
        "quotes_verified": answer.quotes_verified,
        "quotes_snapped": answer.quotes_snapped,
        "instruction": make_instruction(texts, question),
        "source_chunk_id": chunk.id,
        "source": title_of(chunk),
        "generator_model": model_id,
        "seed": seed,
    }


class DatasetWriter:
    """Append-only, fsynced sample store in an output folder, resumable with the same run config."""

    def __init__(self, out_dir: Path, config: dict[str, Any]) -> None:
        self.dir = Path(out_dir)
        self.config = config
        self._lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RagError(f"cannot create the output folder {self.dir}: {e.strerror or e}") from None
        run = self.dir / RUN
        if run.exists():
            try:
                old = json.loads(run.read_text(encoding="utf-8"))
            except ValueError:
                raise RagError(f"{run} is damaged: delete the output folder {self.dir} or use another --out") from None
            diffs = _differences(old, config)
            if diffs:
                raise RagError(f"{self.dir} holds a run made with other arguments ({'; '.join(diffs)}): "
                               "use the same arguments to resume, or another --out")
        elif (self.dir / DATASET).exists():
            raise RagError(f"{self.dir} has a {DATASET} but no {RUN}: use an empty folder for --out")
        else:
            write_json_atomic(run, config)
        self.progress = read_jsonl(self.dir / PROGRESS)
        self.done: set[int] = {p["chunk_id"] for p in self.progress}
        samples = read_jsonl(self.dir / DATASET)
        kept = [s for s in samples if s["source_chunk_id"] in self.done]
        self.resumed_dropped = len(samples) - len(kept)
        self._rewrite_if_needed(DATASET, kept, samples)
        self._rewrite_if_needed(REJECTED, [r for r in read_jsonl(self.dir / REJECTED) if r["chunk_id"] in self.done], None)
        self._rewrite_if_needed(PROGRESS, self.progress, None)
        self.samples_on_disk = len(kept)

    def _rewrite_if_needed(self, name: str, rows: list[dict], original: list[dict] | None) -> None:
        """Cut torn lines and unfinished chunks' samples, so appends continue from a clean file."""
        path = self.dir / name
        if not path.exists():
            return
        clean = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if path.read_text(encoding="utf-8") == clean:
            return
        write_text_atomic(path, clean)

    @staticmethod
    def _append(path: Path, rows: Iterable[dict]) -> None:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if not data:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def add_chunk(self, chunk_id: int, samples: list[dict], counts: dict[str, Any],
                  rejected: list[dict] | None = None) -> None:
        """Append a finished chunk's samples, then its progress line (the chunk counts as done only after it)."""
        with self._lock:
            if chunk_id in self.done:
                return
            self._append(self.dir / DATASET, samples)
            self._append(self.dir / REJECTED, [{"chunk_id": chunk_id, **r} for r in rejected or []])
            line = {"chunk_id": chunk_id, "kept": len(samples), **counts}
            self._append(self.dir / PROGRESS, [line])
            self.progress.append(line)
            self.done.add(chunk_id)
            self.samples_on_disk += len(samples)

    def samples(self) -> list[dict]:
        return read_jsonl(self.dir / DATASET)
