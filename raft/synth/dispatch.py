"""Running the teacher over the chunks of a `raft generate` run, and settling each outcome as it arrives.

Three ways, chosen by `raft.synth.run.run`: units of `batch_size` chunks in this process (an in-process model
batches), one chunk per request on `workers` threads (a server backend serves requests in parallel:
rag.generation.base.Generator.parallel_requests), or a Ray cluster (raft.synth.ray_engine). Whichever runs
them, a unit's outcome is settled by one `ChunkTally`: its results written to the dataset, or the failure
counted; a teacher that keeps failing stops the run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import closing
from typing import Any

from raft.synth.samples import DatasetWriter
from rag.errors import GeneratorError, RagError

#: (chunks of the unit, their ChunkResults (raft.synth.run) or None, the teacher's error or None)
Outcome = tuple[list[Any], "list[Any] | None", "GeneratorError | None"]


class ChunkTally:
    """The run's progress over chunks: writes each finished chunk, counts rejections and failures, shows them
    on the progress bar, and stops the run after `max_failures` failures of the teacher in a row.

    :param writer: the dataset being written (finished chunks are appended to it).
    :param bar: the run's progress bar (rag.common.progress.progress_bar), one step per chunk.
    :param max_failures: failures in a row that stop the run (RaftConfig.max_failures).
    :param on_chunk: called with each ChunkResult once it is on disk, or None.
    """

    def __init__(self, writer: DatasetWriter, bar: Any, max_failures: int,
                 on_chunk: Callable[[Any], None] | None = None) -> None:
        self.writer, self.bar, self.max_failures, self.on_chunk = writer, bar, max_failures, on_chunk
        self.rejected: Counter = Counter()
        self.failed: list[str] = []  # ids (16 hex digits) of the chunks skipped for now
        self.last_error: GeneratorError | None = None
        self.streak = 0

    def finish(self, results: list[Any]) -> None:
        """Write the ChunkResults of one unit and move the bar."""
        self.streak = 0
        for result in results:
            self.writer.add_chunk(result.chunk_id, result.samples, result.counts, result.rejected)
            self.rejected.update(result.counts.get("rejected", {}))
            if self.on_chunk:
                self.on_chunk(result)
        top = ", ".join(f"{k.split('_', 1)[1]}={v}" for k, v in self.rejected.most_common(3))
        failed = f" failed={len(self.failed)}" if self.failed else ""
        self.bar.set_postfix_str(f"kept={self.writer.samples_on_disk} rejected={sum(self.rejected.values())}"
                                 + (f" ({top})" if top else "") + failed)
        self.bar.update(len(results))

    def failure(self, chunks: list[Any], error: GeneratorError) -> None:
        """Count a unit the teacher failed on.

        The chunks get no progress line, so the next run retries them.

        :raises RagError: the teacher failed `max_failures` times in a row.
        """
        self.streak += 1
        self.failed.extend(f"{c.id:016x}" for c in chunks)
        self.last_error = error
        self.bar.write(f"raft: {len(chunks)} chunk(s) skipped for now: {error}")
        if self.streak >= self.max_failures:
            raise RagError(f"the teacher failed {self.streak} times in a row (last: {error}); "
                           "fix it and rerun the same command to resume")

    def settle(self, outcome: Outcome) -> None:
        """Write a unit's results, or count its failure."""
        chunks, results, error = outcome
        if error is not None:
            self.failure(chunks, error)
        else:
            self.finish(results)


def attempt(process: Callable[[list[Any]], list[Any]], chunks: list[Any]) -> Outcome:
    """One unit through `process` (a ChunkProcessor); a GeneratorError is returned as the outcome, not raised."""
    try:
        return chunks, process(chunks), None
    except GeneratorError as e:
        return chunks, None, e


def dispatch(todo: Sequence[Any], tally: ChunkTally, *, process: Callable[[list[Any]], list[Any]] | None,
             parallel: bool, workers: int, batch_size: int, engine: Any = None, config: Any = None) -> None:
    """Run the teacher over the chunks `todo`, settling every unit's outcome in `tally` as it arrives.

    :param process: the ChunkProcessor (unused with an engine).
    :param parallel: the generator serves requests in parallel (Generator.parallel_requests): one chunk per
        request on `workers` threads when workers > 1, else one chunk per unit; otherwise units of `batch_size`.
    :param engine: a RaftRayEngine, whose `generate(todo, config)` streams the outcomes back; None: here.
    :raises RagError: from `tally` when the teacher keeps failing; the chunks not yet started are cancelled.
    """
    if engine is not None:  # a Ray cluster: each unit is written as its result streams back
        with closing(engine.generate(todo, config)) as outcomes:
            for outcome in outcomes:
                tally.settle(outcome)
    elif workers > 1 and parallel:
        on_threads(todo, tally, process, workers)
    else:
        size = batch_size if not parallel else 1
        for start in range(0, len(todo), size):
            tally.settle(attempt(process, list(todo[start:start + size])))


def on_threads(todo: Sequence[Any], tally: ChunkTally, process: Callable[[list[Any]], list[Any]],
               workers: int) -> None:
    """One chunk per request on `workers` threads, at most 2 x workers chunks in flight, settled as they end."""
    with ThreadPoolExecutor(workers, thread_name_prefix="raft") as pool:
        pending = set()
        try:
            for chunk in todo:  # keep at most 2*workers chunks in flight
                pending.add(pool.submit(attempt, process, [chunk]))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        tally.settle(f.result())
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    tally.settle(f.result())
        except BaseException:
            for f in pending:
                f.cancel()
            raise
