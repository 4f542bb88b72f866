"""`raft generate --engine ray`: the teacher's work as a Ray Data pipeline, results written by the driver.

The chunks to do become a Ray dataset of *units*: one unit is what the single-process run hands to its
ChunkProcessor at once (`--batch-size` chunks for an in-process teacher, one chunk for an HTTP teacher),
so a unit's samples come out the same on a cluster as in one process. `map_batches(RaftWorker,
ActorPoolStrategy)` runs them; each actor holds a full `raft.synth.run.ChunkProcessor`:
  - an in-process teacher (the bundled model, a model folder, the `teacher` extra): loaded once per actor,
    one unit per call, torch threads = the actor's CPUs;
  - an OpenAI-compatible endpoint (vLLM on a GPU node, the usual server for a large teacher): each call
    takes `--workers` units and sends their requests concurrently from a thread pool, so the server sees
    up to (actors x --workers) requests at once.
The actor also loads the index (its chunks, vectors and FAISS search choose the distractors) and checks
that it sees the generation the driver indexed.

Results come back as JSON (the ChunkResult fields; nothing is pickled) in completion order, and the
driver writes each unit through the same `DatasetWriter` as a local run: samples first, then the chunk's
progress line. A killed driver therefore leaves the same resumable folder as a killed local run (the
next run drops a chunk's samples without its progress line and redoes it), and a teacher failure
(GeneratorError) skips the unit's chunks for the next run and counts toward `max_failures`, as locally.

Limits: every node must read the index folder at the driver's path (one machine, or shared storage) and
hold the teacher (the bundled model comes with the package; a model folder must exist on each node); an
HTTP teacher's key comes from RAG_API_KEY / OPENAI_API_KEY in the workers' environment (a local cluster
inherits the driver's; on a cluster set it where `ray start` runs), never through Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from raft.synth.run import ChunkProcessor, ChunkResult, RaftConfig
from rag.errors import GeneratorError, RagError
from rag.index.ray_engine import (
    RayCluster,
    RayEngine,
    pool_size,
    set_threads,
    stream_batches,
)

# The settings a worker needs (index, embedder check, teacher, generation parameters); secrets stay home.
WORKER_SETTINGS = ("index_dir", "embed_model", "embed_dtype", "embed_batch_size", "model", "model_name",
                   "max_new_tokens", "temperature", "top_p", "top_k_sampling", "repetition_penalty", "seed",
                   "model_timeout", "model_deadline", "model_max_reply_bytes", "decoder", "draft", "prefill_dtype",
                   "cache_dir")

Outcome = tuple[list, list[ChunkResult] | None, GeneratorError | None]  # (chunks, results, teacher failure)


def worker_settings(settings: Any) -> dict[str, Any]:
    """The WORKER_SETTINGS of `settings` as plain JSON-like values."""
    out = {k: getattr(settings, k) for k in WORKER_SETTINGS}
    out["index_dir"] = str(Path(out["index_dir"]).resolve())
    out["cache_dir"] = None if out["cache_dir"] is None else str(out["cache_dir"])
    return out


class RaftWorker:
    """A Ray Data actor holding a ChunkProcessor (teacher, index, distractor sampler).

    Rows in: {"unit", "chunk_ids"}; rows out: {"unit", "results": JSON list of ChunkResult fields,
    "failure": the GeneratorError message when the teacher failed on this unit, "error": the reason this
    actor cannot work at all (index not readable here, model missing), which stops the run}.
    """

    def __init__(self, settings: dict[str, Any], config: dict[str, Any], generation: str, threads: float = 1,
                 requests: int = 1) -> None:
        from rag.api import generation_params, get_embedder, get_generator
        from rag.config import Settings, environment_api_key
        from rag.index.store import VectorIndex

        self.error = ""
        self.requests = max(1, requests)
        set_threads(threads)
        try:
            # model_construct: the driver's validated values as they are; no environment or rag.toml here
            # except the key, which never travels through Ray: the worker's own RAG_API_KEY / OPENAI_API_KEY
            s = Settings.model_construct(**{**settings, "index_dir": Path(settings["index_dir"]),
                                            "api_key": environment_api_key()})
            self.index = VectorIndex.load(s.index_dir, get_embedder(s))
            if self.index.generation != generation:
                raise RagError(f"this worker sees index generation {self.index.generation!r} at {s.index_dir}, the "
                               f"driver {generation!r}: put the index folder on storage every node reads, and "
                               "don't rebuild it during the run")
            generator = get_generator(s)
            self.parallel = generator.parallel_requests
            self.process = ChunkProcessor(self.index, generator, generation_params(s), RaftConfig(**config))
        except RagError as exc:
            self.error = f"{exc} (on a Ray worker)"

    def _unit(self, chunk_ids: Any) -> tuple[str, str]:
        chunks = [self.index.chunks[self.index.pos_by_id[int(c)]] for c in chunk_ids]
        try:
            results = self.process(chunks)
        except GeneratorError as exc:
            return "", str(exc) or type(exc).__name__
        return json.dumps([asdict(r) for r in results], ensure_ascii=False), ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["unit"])
        if self.error:
            out = [("", "")] * n
        elif self.parallel and self.requests > 1 and n > 1:
            with ThreadPoolExecutor(min(self.requests, n), thread_name_prefix="raft-ray") as pool:
                out = list(pool.map(self._unit, batch["chunk_ids"]))
        else:
            out = [self._unit(ids) for ids in batch["chunk_ids"]]
        return {"unit": batch["unit"], "results": np.array([r for r, _ in out], dtype=object),
                "failure": np.array([f for _, f in out], dtype=object),
                "error": np.array([self.error] * n, dtype=object)}


class RaftRayEngine:
    """`raft.synth.run.run`'s engine on a Ray cluster: the index is built by `rag.index.ray_engine.RayEngine`,
    the units of chunks run on RaftWorker actors, the driver writes what comes back."""

    def __init__(self, cluster: RayCluster, workers: int | None = None, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0) -> None:
        """
        :param cluster: the cluster (connected on first use).
        :param workers: RaftWorker actors (and actors per indexing stage); None = as many as the cluster's
            CPUs hold.
        :param cpus_per_worker: CPUs each actor reserves (= an in-process teacher's torch threads).
        :param gpus_per_worker: GPUs each *embedding* actor of the indexing step reserves; an in-process
            teacher runs on CPU (use an OpenAI-compatible server such as vLLM for a GPU teacher).
        """
        self.cluster = cluster
        self.workers = workers
        self.cpus = cpus_per_worker
        self.gpus = gpus_per_worker
        self._settings: dict[str, Any] | None = None
        self._generation = ""
        self._parallel = False

    def build_engine(self) -> RayEngine:
        """The engine `rag.api.index_corpus` uses for the run's indexing step, on the same cluster."""
        return RayEngine(self.cluster, self.workers, self.cpus, self.gpus)

    def prepare(self, index: Any, settings: Any, config: RaftConfig) -> str:
        """Check the run's settings here, before any worker starts, and remember what the workers need.

        :param index: the loaded index (its generation is checked by every worker).
        :param settings: the run's rag.config.Settings.
        :param config: the run's RaftConfig.
        :returns: the teacher's model id (as the stats report it).
        :raises RagError: bad generation settings, an unknown model spec, a local model that cannot be
            found or converted, or an answer mode the teacher cannot do (an HTTP teacher is built here to
            check: it contacts nothing until asked).
        """
        from rag.api import generation_params, get_generator
        from rag.generation.factory import resolve_model

        params = generation_params(settings)
        spec = resolve_model(settings.model, model_name=settings.model_name)
        if not spec.local:
            ChunkProcessor(index, get_generator(settings), params, config)
        else:  # convert / assemble the model once here: the actors on this node then find it in the cache
            spec.local_dir(settings.cache_dir)
        self._parallel = not spec.local
        self._settings = worker_settings(settings)
        self._generation = index.generation
        return spec.model_id

    def units(self, todo: list, config: RaftConfig) -> list[list]:
        """The chunks grouped as the local run groups them: one per unit for an HTTP teacher, else
        `config.batch_size`."""
        size = 1 if self._parallel else config.batch_size
        return [todo[i:i + size] for i in range(0, len(todo), size)]

    def generate(self, todo: list, config: RaftConfig) -> Iterator[Outcome]:
        """Run the chunks `todo` on RaftWorker actors; yield (chunks, results, None) or (chunks, None,
        GeneratorError) per unit as each finishes.

        :raises RagError: `prepare` was not called, a worker cannot start (its reason), or Ray failed.
        """
        if self._settings is None:
            raise RagError("RaftRayEngine.prepare must run before generate")
        units = self.units(todo, config)
        if not units:
            return
        ray = self.cluster.ray()
        per_call = config.workers if self._parallel else 1  # units per actor call (its thread pool)
        calls = math.ceil(len(units) / per_call)
        size = pool_size(self.cluster, self.workers, self.cpus, 0, calls)
        rows = [{"unit": i, "chunk_ids": [c.id for c in unit]} for i, unit in enumerate(units)]
        worker_config = {**config.model_dump(), "progress": False}
        ds = ray.data.from_items(rows, override_num_blocks=calls).map_batches(
            RaftWorker, batch_size=per_call, batch_format="numpy", num_cpus=self.cpus,
            compute=ray.data.ActorPoolStrategy(size=size),
            fn_constructor_kwargs={"settings": self._settings, "config": worker_config,
                                   "generation": self._generation, "threads": self.cpus,
                                   "requests": config.workers})
        batches = stream_batches(ds, "RAFT generation")
        try:
            for batch in batches:
                for unit, results, failure in zip(batch["unit"], batch["results"], batch["failure"]):
                    chunks = units[int(unit)]
                    if failure:
                        yield chunks, None, GeneratorError(str(failure))
                    else:
                        yield chunks, [ChunkResult(**d) for d in json.loads(str(results))], None
        finally:
            batches.close()
