"""The `raft generate` run: index the folder, pick chunks, and for each chunk ask questions, plan samples,
write and verify CoT answers, append the kept samples; then a stats report.

Everything model- and index-related comes from rag.api; this module only orchestrates.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rag.errors import RagError
from raft.answers import AnswerWriter
from raft.dataset import (
    STATS,
    DatasetWriter,
    SampleBuilder,
    derive_rng,
    make_record,
    write_json_atomic,
)
from raft.distractors import STRATEGIES, DistractorSampler
from raft.questions import QuestionGenerator

FORMAT = 1


@dataclass
class RaftConfig:
    """What decides the data (stored in run.json) plus how the run is carried out (limit, workers)."""

    corpus: str
    questions: int = 3
    distractors: int = 4
    p: float = 0.8
    strategy: str = "hard"
    seed: int = 0
    min_chunk_words: int = 12
    require_quote: bool = True
    # not part of run.json: they don't change any sample
    limit: int | None = None
    workers: int = 1
    progress: bool = True

    def validate(self) -> None:
        if self.questions < 1:
            raise RagError(f"--questions must be >= 1, got {self.questions}")
        if self.distractors < 0:
            raise RagError(f"--distractors must be >= 0, got {self.distractors}")
        if not 0.0 <= self.p <= 1.0:
            raise RagError(f"--p must be between 0 and 1, got {self.p}")
        if self.strategy not in STRATEGIES:
            raise RagError(f"unknown --distractor-strategy {self.strategy!r}: use {', '.join(STRATEGIES)}")
        if self.limit is not None and self.limit < 1:
            raise RagError(f"--limit must be >= 1, got {self.limit}")
        if self.workers < 1:
            raise RagError(f"--workers must be >= 1, got {self.workers}")

    def run_record(self, settings) -> dict[str, Any]:
        """The arguments a resumed run must repeat (run.json)."""
        d = asdict(self)
        for k in ("limit", "workers", "progress"):
            d.pop(k)
        d["corpus"] = str(Path(self.corpus).resolve())
        d.update(format=FORMAT, index_dir=str(Path(settings.index_dir).resolve()), model=settings.model,
                 model_name=settings.model_name, max_new_tokens=settings.max_new_tokens,
                 temperature=settings.temperature, embed_model=settings.embed_model,
                 chunk_tokens=settings.chunk_tokens)
        return d


def select_chunks(chunks: list, seed: int, limit: int | None, min_words: int) -> tuple[list, list]:
    """(chosen, too_short): the chunks in a seeded order that doesn't depend on the index's order; first `limit`."""
    order = sorted(chunks, key=lambda c: derive_rng(seed, "order", c.id).random())
    if limit is not None:
        order = order[:limit]
    usable = [c for c in order if len(c.text.split()) >= min_words]
    return usable, [c for c in order if len(c.text.split()) < min_words]


@dataclass
class ChunkResult:
    chunk_id: int
    samples: list[dict]
    counts: dict[str, Any] = field(default_factory=dict)
    rejected: list[dict] = field(default_factory=list)


class ChunkProcessor:
    """`process(chunk) -> ChunkResult`: questions -> sample plans -> CoT answers -> verification."""

    def __init__(self, index, generator, params, config: RaftConfig) -> None:
        self.index = index
        self.generator = generator
        self.config = config
        self.questions = QuestionGenerator(generator, config.questions, params)
        self.answers = AnswerWriter(generator, params, require_quote=config.require_quote)
        self.builder = SampleBuilder(index, DistractorSampler(index, config.strategy), config.distractors, config.p)

    def _tokens(self, text: str) -> int:
        try:
            return int(self.generator.count_tokens(text))
        except Exception:  # a backend without a tokenizer: estimate
            return max(1, len(text) // 4)

    def __call__(self, chunk) -> ChunkResult:
        cfg = self.config
        pos = self.index.pos_by_id[chunk.id]
        qres = self.questions(chunk.text)
        rejected = Counter(qres.rejected)
        samples: list[dict] = []
        dropped: list[dict] = []
        if not qres.questions:
            dropped.append({"stage": "questions", "reason": "chunk_no_questions", "raw": qres.raw})
        quotes = Counter()
        tokens = 0
        for qi, question in enumerate(qres.questions):
            plan = self.builder.plan(pos, derive_rng(cfg.seed, chunk.id, qi))
            answer = self.answers(question, chunk.text)
            for q in answer.quotes:
                quotes[q.status] += 1
            if not answer.ok:
                rejected[f"answer_{answer.reason}"] += 1
                dropped.append({"stage": "answer", "reason": answer.reason, "question": question, "raw": answer.raw})
                continue
            rec = make_record(chunk=chunk, question=question, qi=qi, plan=plan, answer=answer,
                              model_id=self.generator.model_id, seed=cfg.seed)
            rec_tokens = self._tokens(rec["instruction"] + "\n" + rec["cot_answer"])
            tokens += rec_tokens
            samples.append(rec)
        counts = {"questions": len(qres.questions), "answers": len(qres.questions), "rejected": dict(rejected),
                  "quotes": dict(quotes), "tokens": tokens}
        return ChunkResult(chunk.id, samples, counts, dropped)


def compute_stats(writer: DatasetWriter, config: RaftConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """The report of the whole output folder (all runs that built it)."""
    samples = writer.samples()
    progress = writer.progress
    rejected: Counter = Counter()
    quotes: Counter = Counter()
    for p in progress:
        rejected.update(p.get("rejected", {}))
        quotes.update(p.get("quotes", {}))
    n_chunks = sum(1 for p in progress if p.get("questions") is not None)
    n_q = sum(p.get("questions") or 0 for p in progress)
    answers = sum(p.get("answers") or 0 for p in progress)
    tokens = sum(p.get("tokens") or 0 for p in progress)
    n = len(samples)
    q_total = sum(quotes.values())
    verified = quotes.get("exact", 0) + quotes.get("snapped", 0)
    return {
        "samples": n,
        "chunks_done": len(progress),
        "chunks_with_questions_asked": n_chunks,
        "questions": n_q,
        "questions_per_chunk": round(n_q / n_chunks, 3) if n_chunks else 0.0,
        "answers_attempted": answers,
        "kept_fraction": round(n / answers, 3) if answers else 0.0,
        "oracle_fraction": round(sum(s["oracle_present"] for s in samples) / n, 3) if n else None,
        "p": config.p,
        "distractors": config.distractors,
        "distractor_strategy": config.strategy,
        "rejections": dict(sorted(rejected.items())),
        "quotes": {"total": q_total, "exact": quotes.get("exact", 0), "snapped": quotes.get("snapped", 0),
                   "fabricated": quotes.get("fabricated", 0)},
        "quote_verification_rate": round(verified / q_total, 3) if q_total else None,
        "tokens_per_sample": round(tokens / n, 1) if n else None,
        **extra,
    }


def format_stats(stats: dict[str, Any]) -> str:
    rej = ", ".join(f"{k} {v}" for k, v in stats["rejections"].items()) or "none"
    rate = stats["quote_verification_rate"]
    return (f"{stats['samples']} samples from {stats['chunks_done']} chunks "
            f"({stats['questions_per_chunk']} questions/chunk, {stats['answers_attempted']} answers tried); "
            f"oracle fraction {stats['oracle_fraction']} (p={stats['p']}), strategy {stats['distractor_strategy']}; "
            f"quotes verified {'n/a' if rate is None else rate}; tokens/sample {stats['tokens_per_sample']}; "
            f"rejected: {rej}")


def run(folder: Path, out_dir: Path, settings, config: RaftConfig, *, generator=None, index_first: bool = True,
        on_chunk: Callable[[ChunkResult], None] | None = None) -> dict[str, Any]:
    """Generate (or resume) a RAFT dataset in `out_dir` from the course files in `folder`; return the stats.

    `generator` overrides the configured backend (tests, or an already loaded model); `on_chunk` is called
    after each chunk is on disk.
    """
    from rag.api import generation_params, get_embedder, index_corpus
    from rag.api import get_generator as configured_generator
    from rag.generate import OpenAIGenerator
    from rag.index import VectorIndex

    config.validate()
    started = time.perf_counter()
    folder = Path(folder)
    if not folder.exists():
        raise RagError(f"corpus folder {folder} does not exist: give a folder of .md/.txt/.pdf/.html files")
    writer = DatasetWriter(out_dir, config.run_record(settings))  # refuse other arguments before any work
    if index_first:
        index_corpus(folder, settings)
    index = VectorIndex.load(settings.index_dir, get_embedder(settings))
    if len(index) < 2:
        raise RagError(f"the index of {folder} has {len(index)} chunk(s): RAFT needs an oracle and distractors")
    chosen, too_short = select_chunks(index.chunks, config.seed, config.limit, config.min_chunk_words)
    for c in too_short:
        if c.id not in writer.done:
            writer.add_chunk(c.id, [], {"questions": None, "rejected": {"chunk_too_short": 1}})
    todo = [c for c in chosen if c.id not in writer.done]
    generator = generator or configured_generator(settings)
    params = generation_params(settings)
    process = ChunkProcessor(index, generator, params, config)
    before = writer.samples_on_disk
    kept = 0
    rejected: Counter = Counter()

    from tqdm import tqdm

    bar = tqdm(total=len(chosen), initial=len(chosen) - len(todo), desc="raft chunks", unit="chunk",
               disable=not config.progress or None, dynamic_ncols=True)

    def finish(result: ChunkResult) -> None:
        nonlocal kept
        writer.add_chunk(result.chunk_id, result.samples, result.counts, result.rejected)
        kept += len(result.samples)
        rejected.update(result.counts.get("rejected", {}))
        top = ", ".join(f"{k.split('_', 1)[1]}={v}" for k, v in rejected.most_common(3))
        bar.set_postfix_str(f"kept={writer.samples_on_disk} rejected={sum(rejected.values())}" + (f" ({top})" if top else ""))
        bar.update(1)
        if on_chunk:
            on_chunk(result)

    try:
        # HTTP backends serve requests in parallel; an in-process model runs one generation at a time.
        parallel = getattr(generator, "parallel_requests", isinstance(generator, OpenAIGenerator))
        if config.workers > 1 and parallel:
            with ThreadPoolExecutor(config.workers, thread_name_prefix="raft") as pool:
                pending = set()
                queue = iter(todo)
                try:
                    for chunk in queue:  # keep at most 2*workers chunks in flight
                        pending.add(pool.submit(process, chunk))
                        if len(pending) >= 2 * config.workers:
                            done, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for f in done:
                                finish(f.result())
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            finish(f.result())
                except BaseException:
                    for f in pending:
                        f.cancel()
                    raise
        else:  # the local model runs one generation at a time anyway
            for chunk in todo:
                finish(process(chunk))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    stats = compute_stats(writer, config, {
        "generator_model": generator.model_id,
        "seed": config.seed,
        "chunks_selected": len(chosen) + len(too_short),
        "this_run": {"chunks": len(todo), "samples": writer.samples_on_disk - before, "seconds": round(seconds, 1),
                     "samples_per_minute": round(60 * (writer.samples_on_disk - before) / seconds, 2) if seconds else 0.0,
                     "resumed": len(chosen) - len(todo) > 0, "dropped_unfinished": writer.resumed_dropped,
                     "workers": config.workers},
    })
    write_json_atomic(Path(out_dir) / STATS, stats)
    return stats
