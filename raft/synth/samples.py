"""RAFT sample records (ARCHITECTURE.md, "RAFT sample record") and the append-only, resumable writer.

Output folder layout:
  run.json        the arguments that decide the data; a restart with other ones is refused
  dataset.jsonl   one sample a line, appended as chunks finish (flushed + fsynced)
  rejected.jsonl  the rejected answers/question lists with their reason and the raw reply
  progress.jsonl  one line per finished chunk (its counts); a chunk is done only once this line is on disk
  stats.json      written after each run
  .lock           held while a run writes the folder (a second `raft generate` on it is refused)
  *.damaged       lines a resumed run found damaged (not JSON objects, bad fields), moved out of the way
A killed run leaves at most one chunk with samples but no progress line: the next run drops those samples
and redoes the chunk (its sampling decisions come from (seed, chunk id), so they come out the same).
"""

from __future__ import annotations

import random
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft.prompts import instruction as make_instruction
from raft.records import DATASET, PROGRESS, REJECTED, RUN, check_record, title_of
from rag.common.runfolder import FolderLock, append_jsonl, check_identity, read_jsonl, repair_jsonl
from rag.errors import RagError


@dataclass
class SamplePlan:
    """The sampling decisions for one question: which documents, in which order, oracle kept or not."""

    docs: list[Any]  # rag Chunks in the order shown
    oracle_present: bool
    oracle_index: int  # position of the oracle among docs, -1 when dropped
    distractor_ids: list[int]
    wanted: int = 0  # documents asked for: k + 1 (the oracle and k distractors, or k + 1 distractors)

    @property
    def missing(self) -> int:
        """How many documents fewer than asked the sample shows (the index had too few eligible distractors)."""
        return max(0, self.wanted - len(self.docs))


class SampleBuilder:
    """Decide a sample's documents: the oracle with probability p plus k distractors (k+1 without it), shuffled.

    The sampler returns fewer distractors than asked when the index has too few eligible chunks (a small
    corpus of near-identical pages: every other chunk is a near-duplicate of the oracle or holds the
    answer). The plan then shows fewer than k + 1 documents, and says so in `wanted` / `missing`; with the
    oracle dropped it may show none, and `raft generate` rejects such a sample (`no_documents`) instead of
    writing an answer that quotes a passage the student never sees.
    """

    def __init__(self, index, sampler, k: int = 4, p: float = 0.8) -> None:
        if not 0.0 <= p <= 1.0:
            raise RagError(f"--p must be between 0 and 1, got {p}")
        if k < 0:
            raise RagError(f"--distractors must be >= 0, got {k}")
        self.index, self.sampler, self.k, self.p = index, sampler, k, p

    def plan(self, oracle_pos: int, rng: random.Random, answer: list[str] | None = None) -> SamplePlan:
        """The documents of one sample.

        :param oracle_pos: the oracle's position in `index.chunks`.
        :param rng: this sample's random generator (raft.records.derive_rng(seed, chunk id, question no.)).
        :param answer: the verified quotes; distractors that contain one of them are skipped.
        :returns: the plan; `wanted` is k + 1 and `missing` how many of those the index could not supply
            (0 documents is possible when the oracle is left out: the caller must not write that sample).
        """
        present = rng.random() < self.p
        picked = self.sampler(oracle_pos, self.k if present else self.k + 1, rng, answer=answer)
        positions = ([oracle_pos] if present else []) + picked
        rng.shuffle(positions)
        chunks = self.index.chunks
        return SamplePlan([chunks[p] for p in positions], present,
                          positions.index(oracle_pos) if present else -1, [chunks[p].id for p in picked],
                          wanted=self.k + 1)


def make_record(*, chunk, question: str, qi: int, plan: SamplePlan, answer, model_id: str, seed: int) -> dict:
    """The sample record of ARCHITECTURE.md, plus quote counts.

    :raises ValueError: the plan shows no document, or the answer is not a verified one that parses to
        its final answer (`raft.synth.answers.parse_answer`): the run rejects those before, so this is a bug.
    """
    from raft.synth.answers import parse_answer

    if not plan.docs:
        raise ValueError(f"sample {chunk.id:016x}-{qi} has no documents: it must be rejected, not written")
    if not answer.ok or parse_answer(answer.cot_answer)[0] != answer.final_answer:
        raise ValueError(f"sample {chunk.id:016x}-{qi}: the answer is not one verified final answer")
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


def _check_log_row(row: dict) -> None:
    """The validator of progress.jsonl and rejected.jsonl rows: they name their chunk."""
    cid = row.get("chunk_id")
    if not isinstance(cid, int) or isinstance(cid, bool):
        raise ValueError(f"field chunk_id must be an integer, got {cid!r}")


class DatasetWriter:
    """Append-only, fsynced sample store in an output folder, resumable with the same run config.

    Opening it locks the folder (one `raft generate` per --out; close() or the end of the process releases
    it), checks run.json, and repairs the logs for appending (rag.common.runfolder): a torn last line and
    the samples of unfinished chunks are dropped (`resumed_dropped`); a damaged line anywhere else is moved
    to FILE.damaged, every valid line is kept, and `notes` / `damaged` say so (printed to stderr too).
    """

    def __init__(self, out_dir: Path, config: dict[str, Any], *, announce: bool = True) -> None:
        self.dir = Path(out_dir)
        self.config = config
        self._lock = threading.Lock()
        self._folder = FolderLock(self.dir, f"another `raft generate` is writing {self.dir}: wait for it to "
                                  "finish, or use another --out", what="output folder",
                                  hint="fix its permissions or use another --out", takeover=True)
        try:
            check_identity(self.dir, RUN, config, what="a run", option="--out", leftovers=(DATASET,))
            progress = repair_jsonl(self.dir / PROGRESS, validate=_check_log_row)
            self.progress = progress.rows
            self.done: set[int] = {p["chunk_id"] for p in self.progress}
            dataset = repair_jsonl(self.dir / DATASET, keep=lambda s: s["source_chunk_id"] in self.done,
                                   validate=check_record)
            rejected = repair_jsonl(self.dir / REJECTED, keep=lambda r: r["chunk_id"] in self.done,
                                    validate=_check_log_row)
        except BaseException:
            self.close()
            raise
        self.resumed_dropped = dataset.dropped
        self.samples_on_disk = len(dataset.rows)
        repairs = (progress, dataset, rejected)
        self.damaged = {r.path.name: len(r.damaged) for r in repairs if r.damaged}
        self.notes = [n for r in repairs if (n := r.note())]
        if progress.damaged:
            self.notes.append(f"{PROGRESS} lost {len(progress.damaged)} chunk line(s): those chunks are redone")
        if announce:
            for note in self.notes:
                print(f"raft: {note}", file=sys.stderr, flush=True)

    def add_chunk(self, chunk_id: int, samples: list[dict], counts: dict[str, Any],
                  rejected: list[dict] | None = None) -> None:
        """Append a finished chunk's samples, then its progress line (the chunk counts as done only after it)."""
        with self._lock:
            if chunk_id in self.done:
                return
            append_jsonl(self.dir / DATASET, samples)
            append_jsonl(self.dir / REJECTED, [{"chunk_id": chunk_id, **r} for r in rejected or []])
            line = {"chunk_id": chunk_id, "kept": len(samples), **counts}
            append_jsonl(self.dir / PROGRESS, [line])
            self.progress.append(line)
            self.done.add(chunk_id)
            self.samples_on_disk += len(samples)

    def samples(self) -> list[dict]:
        return read_jsonl(self.dir / DATASET, check_record)

    def close(self) -> None:
        """Release the folder lock (idempotent)."""
        self._folder.release()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
