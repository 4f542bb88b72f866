"""The `raft generate` run: index the folder, pick chunks, and for each chunk ask questions, plan samples,
write and verify CoT answers, append the kept samples; then a stats report.

Everything model- and index-related comes from rag.api; this module only orchestrates.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypedDict

from raft.records import REJECTED, STATS, derive_rng
from raft.synth.answers import AnswerWriter
from raft.synth.config import RaftConfig
from raft.synth.dispatch import ChunkTally, dispatch
from raft.synth.distractors import DistractorSampler
from raft.synth.questions import QuestionGenerator
from raft.synth.samples import DatasetWriter, SampleBuilder, make_record
from rag.answering.grounding import boilerplate_sentences
from rag.common.atomic import write_json_atomic
from rag.errors import GeneratorError, RagError

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
    """`process(chunks) -> [ChunkResult]`: questions -> CoT answers -> verification -> sample plans.

    The chunks of one call are generated together (one batched call per step on an in-process model).
    The answer comes before the plan so that distractors holding the answer can be skipped.
    """

    def __init__(self, index, generator, params, config: RaftConfig) -> None:
        self.index = index
        self.generator = generator
        self.config = config
        self.questions = QuestionGenerator(generator, config.questions, params)
        self.answers = AnswerWriter(generator, params, require_quote=config.require_quote, mode=config.answer_mode,
                                    exclude=boilerplate_sentences(c.text for c in index.chunks))
        self.builder = SampleBuilder(index, DistractorSampler(index, config.strategy), config.distractors, config.p)

    def _tokens(self, text: str) -> int:
        try:
            return int(self.generator.count_tokens(text))
        except Exception:  # a backend without a tokenizer: estimate
            return max(1, len(text) // 4)

    def __call__(self, chunks: list) -> list[ChunkResult]:
        cfg = self.config
        qresults = self.questions.many([c.text for c in chunks])
        jobs = [(ci, qi, q) for ci, qr in enumerate(qresults) for qi, q in enumerate(qr.questions)]
        answers = self.answers.many([(q, chunks[ci].text) for ci, _, q in jobs])
        per_chunk: list[list] = [[] for _ in chunks]
        for (ci, qi, q), answer in zip(jobs, answers):
            per_chunk[ci].append((qi, q, answer))
        results = []
        for chunk, qres, done in zip(chunks, qresults, per_chunk):
            pos = self.index.pos_by_id[chunk.id]
            rejected = Counter(qres.rejected)
            samples: list[dict] = []
            dropped: list[dict] = []
            if not qres.questions:
                dropped.append({"stage": "questions", "reason": qres.reason or "chunk_no_questions", "raw": qres.raw})
            quotes: Counter = Counter()
            short: Counter = Counter()  # samples showing fewer documents than asked, and how many are missing
            tokens = 0
            for qi, question, answer in done:
                for q in answer.quotes:
                    quotes[q.status] += 1
                if not answer.ok:
                    rejected[f"answer_{answer.reason}"] += 1
                    dropped.append({"stage": "answer", "reason": answer.reason, "question": question,
                                    "raw": answer.raw})
                    continue
                verified = [q.text for q in answer.quotes if q.text]
                plan = self.builder.plan(pos, derive_rng(cfg.seed, chunk.id, qi), answer=verified)
                if not plan.docs:  # oracle dropped and no eligible distractor: the student would see nothing
                    rejected["sample_no_documents"] += 1
                    dropped.append({"stage": "sample", "reason": "no_documents", "question": question,
                                    "documents_wanted": plan.wanted, "raw": answer.raw})
                    continue
                if plan.missing:
                    short["samples"] += 1
                    short["missing"] += plan.missing
                rec = make_record(chunk=chunk, question=question, qi=qi, plan=plan, answer=answer,
                                  model_id=self.generator.model_id, seed=cfg.seed)
                tokens += self._tokens(rec["instruction"] + "\n" + rec["cot_answer"])
                samples.append(rec)
            counts = {"questions": len(qres.questions), "answers": len(done), "rejected": dict(rejected),
                      "quotes": dict(quotes), "tokens": tokens, "documents_short": short["samples"],
                      "documents_missing": short["missing"]}
            results.append(ChunkResult(chunk.id, samples, counts, dropped))
        return results


# stats.json's shape. TypedDicts change nothing at runtime: stats.json stays byte-identical. Rates are fractions.
class DocumentCounts(TypedDict):
    """stats.json "documents": documents the samples show against those asked for (see `document_counts`)."""

    per_sample: int  # documents asked for per sample: --distractors + 1
    short_samples: int  # samples showing fewer
    missing: int  # documents missing, summed over the short samples
    no_documents_dropped: int  # samples rejected because they would show none (reason no_documents)


class ThisRun(TypedDict):
    """stats.json "this_run": the last `raft generate` call only (the rest of stats.json covers the folder)."""

    chunks: int  # chunks this call worked on (the others were done before)
    samples: int  # samples it added to dataset.jsonl
    seconds: float  # its wall-clock time, 0.1 s resolution
    samples_per_minute: float
    resumed: bool  # it continued an earlier run's folder
    dropped_unfinished: int  # samples of unfinished chunks dropped on resume (those chunks are redone)
    damaged_lines_moved: dict[str, int]  # file name -> damaged lines moved aside
    repairs: list[str]  # one note per repaired file
    limit: int | None  # --limit (chunks), None for all
    workers: int
    batch_size: int
    engine: str  # "local" or "ray"
    failed_chunks: list[str]  # ids (16 hex digits) of the chunks the teacher failed on


class RunInfo(TypedDict):
    """What `run` adds to the folder's stats (compute_stats's `extra`)."""

    generator_model: str  # the teacher's model id
    seed: int
    chunks_selected: int  # chunks chosen for the dataset, too-short ones included
    this_run: ThisRun


class GenerateStats(RunInfo):
    """stats.json of a `raft generate` output folder (all runs that built it); counts are of dataset.jsonl."""

    samples: int
    chunks_done: int  # chunks with a progress.jsonl line
    chunks_with_questions_asked: int
    questions: int  # questions the teacher wrote
    questions_per_chunk: float
    answers_attempted: int
    kept_fraction: float  # samples / answers_attempted
    oracle_fraction: float | None  # share of samples that show the oracle (aim: --p); None without samples
    p: float
    distractors: int
    distractor_strategy: str
    rejections: dict[str, int]  # reason (question_*, answer_*, sample_*, chunk_*) -> count, sorted by reason
    quotes: dict[str, int]  # total, exact, snapped, fabricated: the teacher's quotes by check status
    quote_verification_rate: float | None  # (exact + snapped) / total; None without quotes
    tokens_per_sample: float | None  # teacher tokens of instruction + CoT answer (len/4 without a tokenizer)
    documents: DocumentCounts
    warnings: list[str]  # from `document_warnings`


def compute_stats(writer: DatasetWriter, config: RaftConfig, extra: RunInfo) -> GenerateStats:
    """The report of the whole output folder (all runs that built it); see `GenerateStats` for each key."""
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
    documents = document_counts(samples, config.distractors + 1, rejected.get("sample_no_documents", 0))
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
        "documents": documents,
        "warnings": document_warnings(documents, n),
        **extra,
    }


def document_counts(samples: list[dict], wanted: int, dropped: int) -> DocumentCounts:
    """How many documents the samples show against the `wanted` = distractors + 1 asked for.

    Counted from the samples on disk (not the per-chunk counts), so the numbers describe the dataset itself.

    :param samples: the dataset's records.
    :param wanted: documents asked for per sample.
    :param dropped: samples rejected because they would have shown no document (`sample_no_documents`).
    :returns: {"per_sample": wanted, "short_samples": samples with fewer, "missing": documents missing in all,
        "no_documents_dropped": dropped} (`DocumentCounts`).
    """
    shown = [len(s["context"]["sentences"]) for s in samples]
    return {"per_sample": wanted, "short_samples": sum(k < wanted for k in shown),
            "missing": sum(max(0, wanted - k) for k in shown), "no_documents_dropped": dropped}


def document_warnings(documents: DocumentCounts, n: int) -> list[str]:
    """One line per document shortfall in `documents` (from `document_counts`); empty when there is none."""
    out = []
    if documents["short_samples"]:
        out.append(f"{documents['short_samples']} of {n} samples show fewer than the {documents['per_sample']} "
                   f"documents asked ({documents['missing']} missing in all): the index has too few chunks that "
                   "are neither near-duplicates of the oracle nor hold its answer; use a bigger corpus or fewer "
                   "--distractors")
    if documents["no_documents_dropped"]:
        out.append(f"{documents['no_documents_dropped']} samples were dropped because they would show no "
                   "document (oracle left out, no eligible distractor): see rejected.jsonl, reason no_documents")
    return out


def format_stats(stats: GenerateStats) -> str:
    """The stats as the one summary line `raft generate` prints."""
    rej = ", ".join(f"{k} {v}" for k, v in stats["rejections"].items()) or "none"
    rate = stats["quote_verification_rate"]
    return (f"{stats['samples']} samples from {stats['chunks_done']} chunks "
            f"({stats['questions_per_chunk']} questions/chunk, {stats['answers_attempted']} answers tried); "
            f"oracle fraction {stats['oracle_fraction']} (p={stats['p']}), strategy {stats['distractor_strategy']}; "
            f"quotes verified {'n/a' if rate is None else rate}; tokens/sample {stats['tokens_per_sample']}; "
            f"rejected: {rej}"
            + (f"; short of documents: {docs['short_samples']} samples" if (docs := stats.get("documents"))
               and docs["short_samples"] else ""))


def teacher_settings(settings):
    """`settings` with the product's default model "auto" made the base "bundled": the teacher of `raft generate`
    is the model named, never the course's RAFT-tuned student (rag.api.effective_model); a folder made before
    "auto" existed recorded "bundled", so it still resumes."""
    from rag.config import is_auto_model

    if is_auto_model(settings.model):
        return settings.model_copy(update={"model": "bundled"})
    return settings


def run(folder: Path, out_dir: Path, settings, config: RaftConfig, *, generator=None, index_first: bool = True,
        on_chunk: Callable[[ChunkResult], None] | None = None, engine=None) -> GenerateStats:
    """Generate (or resume) a RAFT dataset in `out_dir` from the course files in `folder`; return the stats.

    `generator` overrides the configured backend (tests, or an already loaded model); `on_chunk` is called
    after each chunk is on disk. `engine` (raft.synth.ray_engine.RaftRayEngine) indexes the folder and runs
    the teacher on a Ray cluster instead (`generator` is then unused); its results are written here, to the
    same resumable dataset.
    """
    from rag.api import generation_params
    from rag.api import get_generator as configured_generator
    from rag.common.progress import progress_bar

    settings = teacher_settings(settings)
    started = time.perf_counter()
    folder = Path(folder)
    if not folder.exists():
        raise RagError(f"corpus folder {folder} does not exist: give a folder of .md/.txt/.pdf/.html files")
    writer = DatasetWriter(out_dir, config.run_record(settings))  # refuse other arguments before any work
    index = course_index(folder, settings, index_first, engine)
    chosen, too_short = select_chunks(index.chunks, config.seed, config.limit, config.min_chunk_words)
    for c in too_short:
        if c.id not in writer.done:
            writer.add_chunk(c.id, [], {"questions": None, "rejected": {"chunk_too_short": 1}})
    todo = [c for c in chosen if c.id not in writer.done]
    process = None
    if engine is None:
        generator = generator or configured_generator(settings)
        process = ChunkProcessor(index, generator, generation_params(settings), config)
        model_id = generator.model_id
    else:  # the teacher lives in the engine's workers; the engine checks the settings here, before any work
        model_id = engine.prepare(index, settings, config)
    before = writer.samples_on_disk
    bar = progress_bar(total=len(chosen), initial=len(chosen) - len(todo), desc="raft chunks", unit="chunk",
                       enabled=config.progress)
    tally = ChunkTally(writer, bar, config.max_failures, on_chunk)
    try:
        # HTTP backends serve requests in parallel; an in-process model runs batches instead (declared by
        # the backend: rag.generation.base.Generator.parallel_requests).
        dispatch(todo, tally, process=process, parallel=engine is None and generator.parallel_requests,
                 workers=config.workers, batch_size=config.batch_size, engine=engine, config=config)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    new = writer.samples_on_disk - before
    stats = compute_stats(writer, config, {
        "generator_model": model_id,
        "seed": config.seed,
        "chunks_selected": len(chosen) + len(too_short),
        "this_run": {"chunks": len(todo), "samples": new, "seconds": round(seconds, 1),
                     "samples_per_minute": round(60 * new / seconds, 2) if seconds else 0.0,
                     "resumed": len(chosen) - len(todo) > 0, "dropped_unfinished": writer.resumed_dropped,
                     "damaged_lines_moved": writer.damaged, "repairs": writer.notes,
                     "limit": config.limit, "workers": config.workers, "batch_size": config.batch_size,
                     "engine": "ray" if engine is not None else "local",
                     "failed_chunks": tally.failed},
    })
    write_json_atomic(Path(out_dir) / STATS, stats)
    writer.close()
    for warning in stats["warnings"]:
        print(f"raft: warning: {warning}", file=sys.stderr, flush=True)
    if not stats["samples"]:  # a run that produced nothing is not a success (stats.json says what happened)
        raise RagError(nothing_made(stats, tally.last_error, Path(out_dir)))
    return stats


def course_index(folder: Path, settings, index_first: bool = True, engine=None):
    """The index of the course in `folder` (rag.index.store.VectorIndex), built or updated first when
    `index_first` (on the engine's cluster when one is given); what the build left out is said on stderr.

    :raises RagError: the index has fewer than 2 chunks (an oracle and a distractor at least).
    """
    from rag.api import get_embedder, index_corpus, index_report_lines
    from rag.index.store import VectorIndex

    if index_first:
        report = index_corpus(folder, settings, engine=engine.build_engine() if engine else None)
        for line in index_report_lines(report):  # what the index left out is said, as `rag index` says it
            print(f"raft: {line}", file=sys.stderr, flush=True)
    index = VectorIndex.load(settings.index_dir, get_embedder(settings))
    if len(index) < 2:
        raise RagError(f"the index of {folder} has {len(index)} chunk(s): RAFT needs an oracle and distractors")
    return index


def nothing_made(stats: GenerateStats, error: GeneratorError | None, out_dir: Path) -> str:
    """The one-line reason an output folder holds no sample after a run.

    :param stats: the folder's stats (`compute_stats`).
    :param error: the teacher's last failure in this run, if any.
    :param out_dir: the output folder (rejected.jsonl is named).
    :returns: the message `raft generate` exits with (code 1).
    """
    failed = stats["this_run"]["failed_chunks"]
    if error is not None and stats["chunks_done"] == 0:
        return (f"no sample was made: the teacher failed on all {len(failed)} chunk(s) it was given (last: {error}); "
                "fix it and rerun the same command to resume")
    top = ", ".join(f"{k} {v}" for k, v in sorted(stats["rejections"].items(), key=lambda kv: -kv[1])[:3]) or "none"
    return (f"no sample was kept from {stats['chunks_done']} chunk(s): every one was rejected (most: {top})"
            + (f"; the teacher failed on {len(failed)} more (last: {error})" if error is not None else "")
            + f"; see {out_dir / REJECTED} for the teacher's replies")
