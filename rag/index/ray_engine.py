"""`rag index --engine ray`: a build's reading, chunking and embedding as Ray Data pipelines on a cluster.

Why here and not in a `rag/engines/` package: this is the Ray counterpart of the two heavy steps of
rag/index/build.py (`BuildEngine.read_files` and `BuildEngine.embed`) and nothing else; every decision
(what changed, copies, de-duplication, reused vectors, the manifest, the atomic publish) stays in
`build_index`, so a Ray build writes the same index folder as a local one. raft/synth/ray_engine.py, its
RAFT counterpart, reuses `RayCluster` from here.

Two pipelines, with the driver in between:
  1. files to read -> `ray.data.from_items` -> `map_batches(ChunkWorker, ActorPoolStrategy)`: each actor
     holds the embedder's tokenizer and a Chunker with the driver's exact parameters (checked), reads its
     files and returns their chunks as JSON;
  2. the driver decides which chunks need a vector (incremental reuse and de-duplication need every chunk
     id, so this step is a barrier), sorts them longest first as the local build does, and sends the texts
     through `map_batches(EmbedWorker, ActorPoolStrategy)`, each actor holding one embedder.
Results carry their position, so Ray Data may return them in any order. Vectors match a local build within
float tolerance: other batch boundaries and thread counts change the last bits (measured in
tests/rag/index/test_ray.py with 2-text batches in bf16: max abs difference 1.5e-3, cosine >= 0.99997).
A 1-CPU worker embeds about as fast as a local one-thread build, but a stage pays seconds to start its actors
and load the model in each, and a local cluster seconds to start, so Ray only pays off when the embedding takes
minutes (bench/ray_scaling.py measures it; docs/results/ray.md has the figures).

The cluster: `--address` connects to a running one (`ray start --head` on the first node, `ray start
--address HEAD:6379` on the others); without it a one-machine cluster is started for the command and
shut down after it. That local cluster listens on 127.0.0.1 only: Ray replaces a loopback
`_node_ip_address` with the machine's outward address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's
own single-machine mode, the default on macOS/Windows), which is set before Ray is imported; checked
with `ss -ltn` (every Ray listener on 127.0.0.1). Usage statistics are off (RAY_USAGE_STATS_ENABLED=0),
no dashboard, a 512 MiB object store (it spills to disk beyond that).

Limits: the corpus must be readable at the same path on every node that runs a ChunkWorker (one machine,
or shared storage); a model folder given as --embed-model must exist on every node (the bundled model
comes with the package); every node needs this package installed with the `ray` extra.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import RagError
from rag.index.build import FileChunks, ProgressFn, read_and_chunk
from rag.index.embeddings import BUNDLED, Embedder
from rag.ingest.chunking import Chunk, Chunker

INSTALL_HINT = "install the ray extra: pip install -e '.[ray]' (or pip install 'ray[data]')"
LOCAL_OBJECT_STORE_BYTES = 512 * 1024 * 1024
FILES_PER_BATCH = 8
ACTOR_START_TIMEOUT_S = 600
# What the workers inherit: never download a model, no tokenizer thread pools next to torch's.
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray(local: bool = False) -> Any:
    """Import Ray with usage statistics off (and loopback-only when `local`), or say how to install it.

    :param local: the caller will start a one-machine cluster: make Ray bind 127.0.0.1 (must happen
        before Ray's first import in this process to take effect).
    :returns: the `ray` module (with `ray.data` imported).
    :raises RagError: Ray is not installed.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise RagError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def ray_failure(exc: BaseException, what: str) -> RagError:
    """One line for a failed Ray job: the last line of Ray's report (the worker's own error), and where the logs are."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return RagError(f"{what} failed on the Ray cluster: {last[:300]} (worker logs: /tmp/ray/session_latest/logs)")


class RayCluster:
    """A connection to a Ray cluster, made on first use: the one at `address`, else a one-machine cluster.

    Use as a context manager; `close()` shuts down a cluster this object started and disconnects from one
    it joined (its actors end with the job). When Ray is already initialised in this process (a test
    fixture, a notebook), that cluster is used and left running.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        """
        :param address: a running cluster ("HOST:6379", "auto" for the one `ray start` started on this
            machine, or "ray://HOST:10001" through Ray Client); None starts a local one.
        :param num_cpus: CPUs of a local cluster (default: all of this machine's).
        """
        self.address = address
        self.num_cpus = num_cpus
        self._ray: Any = None
        self._owned = False

    def ray(self) -> Any:
        """The connected `ray` module (connecting on the first call).

        :raises RagError: Ray is not installed, or the cluster at `address` cannot be reached.
        """
        if self._ray is not None:
            return self._ray
        ray = import_ray(local=self.address is None)
        if self.address is not None:
            reachable(self.address)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False,
                                      "runtime_env": {"env_vars": dict(WORKER_ENV)}}
            try:
                if self.address is None:
                    ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1,
                             include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                             _node_ip_address="127.0.0.1", **kwargs)
                else:
                    ray.init(address=self.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
                hint = ("start it with `ray start --head` (or leave out --address for a one-machine cluster)"
                        if self.address else "see /tmp/ray/session_latest/logs")
                raise RagError(f"cannot connect to {where}: {str(exc).splitlines()[0][:200]}; {hint}") from None
            self._owned = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI shows its own
        context.print_on_execution_start = False
        # Start a stage only once all its actors are up (model loaded): work then spreads over all of them,
        # and a pool the cluster cannot hold fails with Ray's "Timed out while starting actors" instead of waiting.
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        _quiet_ray_data()
        self._ray = ray
        return ray

    def resources(self) -> dict[str, float]:
        """The cluster's total resources ({"CPU": n, "GPU": n, ...})."""
        return dict(self.ray().cluster_resources())

    def close(self) -> None:
        """Shut down the cluster this object started or joined (idempotent)."""
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._ray, self._owned = None, False

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a cluster address nothing listens at: `ray.init` would wait for minutes
    (it does for 127.0.0.1:1). "auto" and bare names are left to Ray.

    :raises RagError: nothing accepts a TCP connection at the address's host and port.
    """
    import socket

    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RagError(f"cannot connect to the Ray cluster at {address}: {exc.strerror or exc}; start it with "
                       "`ray start --head` (or leave out --address for a one-machine cluster)") from None


def _quiet_ray_data() -> None:
    """Ray Data logs each execution at INFO (and a warning that its bars are off) to the console; keep errors."""
    import logging

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


def pool_size(cluster: RayCluster, workers: int | None, cpus_per_worker: float, gpus_per_worker: float,
              batches: int) -> int:
    """How many actors a stage gets: `workers`, else as many as the cluster's CPUs (GPUs) hold; never
    more than there are batches, never fewer than 1.

    :raises RagError: GPUs are asked for and the cluster has none.
    """
    res = cluster.resources()
    if gpus_per_worker > 0 and res.get("GPU", 0) < gpus_per_worker:
        raise RagError(f"--gpus-per-worker {gpus_per_worker}: the Ray cluster has {res.get('GPU', 0):g} GPUs")
    if workers is None:
        fits = res.get("GPU", 0) / gpus_per_worker if gpus_per_worker > 0 else res.get("CPU", 1) / cpus_per_worker
        workers = int(fits)
    return max(1, min(workers, batches))


def embedder_spec(embedder: Embedder) -> dict[str, Any]:
    """What a worker needs to load the same embedder: the bundled model by name (each node has its own
    copy in the package), else the resolved folder; the resolved dtype (so "auto" cannot differ by node)."""
    return {"model": BUNDLED if embedder.spec == BUNDLED else embedder.path, "dtype": embedder.dtype,
            "batch_size": embedder.batch_size}


def chunker_spec(chunker: Chunker) -> dict[str, Any]:
    """The Chunker arguments that rebuild `chunker` on a worker (checked there against `chunker.params()`)."""
    return {"max_tokens": chunker.window + 2, "chunk_tokens": chunker.chunk_tokens, "overlap": chunker.overlap,
            "merge_sections": chunker.merge_sections, "embed_headings": chunker.embed_headings,
            "child_tokens": chunker.child_tokens, "ocr": chunker.ocr}


def file_chunks_to_json(fc: FileChunks) -> str:
    """A FileChunks as one JSON text (what a ChunkWorker sends back; nothing is pickled)."""
    return json.dumps({"sha256": fc.sha256, "size": fc.size, "kind": fc.kind, "problem": fc.problem,
                       "dropped": fc.dropped, "notes": fc.notes,
                       "chunks": None if fc.chunks is None else [c.to_record() for c in fc.chunks]},
                      ensure_ascii=False)


def file_chunks_from_json(text: str) -> FileChunks:
    """The inverse of `file_chunks_to_json`.

    :raises ValueError: the text is not such a record.
    """
    d = json.loads(text)
    chunks = None if d["chunks"] is None else [Chunk.from_record(r) for r in d["chunks"]]
    return FileChunks(d["sha256"], int(d["size"]), d["kind"], chunks, d["problem"],
                      dict(d.get("dropped") or {}), list(d.get("notes") or []))


def set_threads(n: float) -> None:
    """Torch threads of a worker = the CPUs it was given (Ray schedules by CPUs; more threads oversubscribe)."""
    import torch

    torch.set_num_threads(max(1, int(n)))


def worker_name() -> str:
    """pid@host of this process: which actor did a row's work (RayEngine.stats counts them)."""
    import socket

    return f"{os.getpid()}@{socket.gethostname()}"


def accounting(name: str, n: int, seconds: float) -> dict[str, np.ndarray]:
    """The "worker" and "busy_s" columns of n output rows: who did them, and each row's share of the time."""
    return {"worker": np.array([name] * n, dtype=object), "busy_s": np.full(n, seconds / max(n, 1))}


class ChunkWorker:
    """A Ray Data actor: reads and chunks files with the driver's Chunker settings.

    Rows in: {"i", "path", "source"}; rows out: {"i", "result": file_chunks_to_json(...) | "",
    "error": "" | the reason this worker cannot chunk (bad settings, model tokenizer missing on its node),
    "worker", "busy_s" (see `accounting`)}.
    """

    def __init__(self, embed: dict[str, Any], chunker: dict[str, Any], params: dict[str, Any]) -> None:
        self.error = ""
        self.name = worker_name()
        try:
            tokenizer = Embedder(embed["model"], dtype=embed["dtype"], batch_size=embed["batch_size"]).tokenizer
            self.chunker = Chunker(tokenizer, **chunker)
            if self.chunker.params() != params:
                raise RagError(f"the chunker on this worker has other settings ({self.chunker.params()}) than the "
                               f"driver's ({params}): install the same course-rag version on every node")
        except RagError as exc:
            self.error = str(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        results, errors = [], []
        for path, source in zip(batch["path"], batch["source"]):
            if self.error:
                results.append("")
                errors.append(self.error)
                continue
            results.append(file_chunks_to_json(read_and_chunk(Path(str(path)), str(source), self.chunker)))
            errors.append("")
        return {"i": batch["i"], "result": np.array(results, dtype=object), "error": np.array(errors, dtype=object),
                **accounting(self.name, len(results), time.perf_counter() - t0)}


class EmbedWorker:
    """A Ray Data actor holding one embedder. Rows in: {"pos", "text"}; rows out: {"pos", "vector", "error",
    "worker", "busy_s"}."""

    def __init__(self, embed: dict[str, Any], threads: float = 1, gpus: float = 0) -> None:
        self.error = ""
        self.name = worker_name()
        set_threads(threads)
        try:
            self.embedder = Embedder(embed["model"], dtype=embed["dtype"], batch_size=embed["batch_size"])
            model = self.embedder.model  # load now, not on the first batch
            if gpus > 0:
                import torch

                if not torch.cuda.is_available():
                    raise RagError("this worker was given a GPU but torch sees no CUDA device: install a CUDA build "
                                   "of torch on the GPU nodes")
                model.to("cuda")
            self.dim = self.embedder.dim
        except RagError as exc:
            self.error, self.dim = str(exc), 1

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["pos"])
        if self.error:
            return {"pos": batch["pos"], "vector": np.zeros((n, self.dim), np.float32),
                    "error": np.array([self.error] * n, dtype=object), **accounting(self.name, n, 0.0)}
        t0 = time.perf_counter()
        vectors = self.embedder.encode([str(t) for t in batch["text"]])
        return {"pos": batch["pos"], "vector": vectors, "error": np.array([""] * n, dtype=object),
                **accounting(self.name, n, time.perf_counter() - t0)}


def stream_batches(ds: Any, what: str) -> Iterator[dict[str, np.ndarray]]:
    """A dataset's output batches (numpy) as they finish, in completion order; the pipeline is stopped when
    the caller stops early.

    :param ds: a Ray dataset whose rows have an "error" column ("" = fine).
    :param what: the step, for messages ("embedding").
    :raises RagError: a row's error (a worker that could not start), or Ray's own failure, in one line.
    """
    import ray

    it = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except ray.exceptions.RayError as exc:
                raise ray_failure(exc, what) from None
            bad = [e for e in batch.get("error", []) if e]
            if bad:
                raise RagError(f"{what} failed on a Ray worker: {bad[0]}")
            yield batch
    finally:
        close = getattr(it, "close", None)
        if close:
            close()


@dataclass
class RayEngine:
    """`build_index`'s engine on a Ray cluster (rag.index.build.BuildEngine): ChunkWorker and EmbedWorker pools.

    :param cluster: the cluster to run on (connected on first use: a build with nothing to read or embed
        never starts Ray).
    :param workers: actors per stage; None = as many as the cluster's CPUs hold (its GPUs, for the
        embedding stage when `gpus_per_worker` > 0). A stage never gets more actors than batches.
    :param cpus_per_worker: CPUs each actor reserves (= its torch threads).
    :param gpus_per_worker: GPUs each embedding actor reserves (0 = embed on CPU).
    :param files_per_batch: files per ChunkWorker call.
    :param texts_per_batch: texts per EmbedWorker call; None = the local build's slice, max(4 x the
        embedder's batch size, 256).
    :raises RagError: a count below its minimum.
    """

    cluster: RayCluster
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    files_per_batch: int = FILES_PER_BATCH
    texts_per_batch: int | None = None
    stats: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)  # per stage, of its last run: `_account`

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise RagError(f"--ray-workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise RagError(f"CPUs per worker must be > 0 and GPUs >= 0, got {self.cpus_per_worker} and "
                           f"{self.gpus_per_worker}")
        if self.files_per_batch < 1 or (self.texts_per_batch is not None and self.texts_per_batch < 1):
            raise RagError(f"batch sizes must be >= 1, got {self.files_per_batch} files and {self.texts_per_batch} "
                           f"texts")

    def _account(self, stage: str, t0: float, items: int, batches: list[dict[str, np.ndarray]]) -> None:
        """Record a stage's wall seconds, items, distinct workers and their summed busy seconds."""
        workers = {str(w) for b in batches for w in b["worker"]}
        busy = float(sum(float(b["busy_s"].sum()) for b in batches))
        self.stats[stage] = {"seconds": round(time.perf_counter() - t0, 3), "items": items,
                             "workers": len(workers), "busy_s": round(busy, 3)}

    def read_files(self, jobs: Sequence[tuple[Path, str]], chunker: Chunker, embedder: Embedder,
                   on_progress: ProgressFn | None = None) -> list[FileChunks]:
        """Read and chunk the (path, source) jobs on ChunkWorker actors; results in the order of `jobs`.

        Each actor rebuilds `chunker` around the tokenizer of `embedder` (loaded on its node).

        :raises RagError: a worker could not build the chunker, or the Ray job failed.
        """
        if not jobs:
            return []
        t0 = time.perf_counter()
        ray = self.cluster.ray()
        n_batches = math.ceil(len(jobs) / self.files_per_batch)
        size = pool_size(self.cluster, self.workers, self.cpus_per_worker, 0, n_batches)
        rows = [{"i": i, "path": str(Path(p).resolve()), "source": s} for i, (p, s) in enumerate(jobs)]
        ds = ray.data.from_items(rows, override_num_blocks=n_batches).map_batches(
            ChunkWorker, batch_size=self.files_per_batch, batch_format="numpy", num_cpus=self.cpus_per_worker,
            compute=ray.data.ActorPoolStrategy(size=size),
            fn_constructor_kwargs={"embed": embedder_spec(embedder), "chunker": chunker_spec(chunker),
                                   "params": chunker.params()})
        out: list[FileChunks | None] = [None] * len(jobs)
        done = 0
        if on_progress:
            on_progress("read", 0, len(jobs))
        seen: list[dict[str, np.ndarray]] = []
        for batch in stream_batches(ds, "reading and chunking"):
            for i, text in zip(batch["i"], batch["result"]):
                out[int(i)] = file_chunks_from_json(str(text))
                done += 1
            seen.append({"worker": batch["worker"], "busy_s": batch["busy_s"]})
            if on_progress:
                on_progress("read", done, len(jobs))
        self._account("read", t0, len(jobs), seen)
        missing = [jobs[i][1] for i, r in enumerate(out) if r is None]
        if missing:
            raise RagError(f"the Ray cluster returned no result for {len(missing)} file(s), e.g. {missing[0]}; rerun")
        return [r for r in out if r is not None]

    def embed(self, texts: Sequence[str], embedder: Embedder, on_progress: ProgressFn | None = None) -> np.ndarray:
        """Embed `texts` on EmbedWorker actors, `texts_per_batch` per call.

        :returns: (len(texts), dim) float32 unit vectors in the order of `texts`.
        :raises RagError: a worker could not load the embedder, or the Ray job failed.
        """
        dim = embedder.dim
        vectors = np.zeros((len(texts), dim), dtype=np.float32)
        if not len(texts):
            return vectors
        t0 = time.perf_counter()
        ray = self.cluster.ray()
        batch = self.texts_per_batch or max(embedder.batch_size * 4, 256)
        n_batches = math.ceil(len(texts) / batch)
        size = pool_size(self.cluster, self.workers, self.cpus_per_worker, self.gpus_per_worker, n_batches)
        rows = [{"pos": j, "text": t} for j, t in enumerate(texts)]
        remote: dict[str, Any] = {"num_gpus": self.gpus_per_worker} if self.gpus_per_worker > 0 else {}
        ds = ray.data.from_items(rows, override_num_blocks=n_batches).map_batches(
            EmbedWorker, batch_size=batch, batch_format="numpy", num_cpus=self.cpus_per_worker,
            compute=ray.data.ActorPoolStrategy(size=size),
            fn_constructor_kwargs={"embed": embedder_spec(embedder), "threads": self.cpus_per_worker,
                                   "gpus": self.gpus_per_worker},
            **remote)
        seen = np.zeros(len(texts), dtype=bool)
        work: list[dict[str, np.ndarray]] = []
        if on_progress:
            on_progress("embed", 0, len(texts))
        for out in stream_batches(ds, "embedding"):
            work.append({"worker": out["worker"], "busy_s": out["busy_s"]})
            pos = out["pos"].astype(np.int64)
            got = np.asarray(out["vector"], dtype=np.float32)
            if got.shape != (len(pos), dim):
                raise RagError(f"a Ray worker returned vectors of shape {got.shape}, expected ({len(pos)}, {dim}): "
                               "is the same embedding model installed on every node?")
            vectors[pos] = got
            seen[pos] = True
            if on_progress:
                on_progress("embed", int(seen.sum()), len(texts))
        if not seen.all():
            raise RagError(f"the Ray cluster returned no vector for {int((~seen).sum())} chunk(s); rerun")
        self._account("embed", t0, len(texts), work)
        return vectors
