"""`rag index --engine ray` on a real local Ray cluster (127.0.0.1, 2 CPUs = two workers): the same index
as the single-process build, incremental updates alike, the CLI against a cluster it did not start, and
no Ray import without --engine ray. Real embedder, real files, real Ray; nothing is mocked."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rag.api import make_chunker
from rag.config import Settings
from rag.errors import RagError
from rag.index.build import build_index
from rag.index.store import VectorIndex
from tests.conftest import ROOT

from tests.raycluster import NO_RAY, cluster, needs_ray  # noqa: F401  (cluster: a fixture)


def build(corpus: Path, index_dir: Path, embedder, engine=None):
    settings = Settings(index_dir=index_dir)
    return build_index(corpus, index_dir, embedder, make_chunker(embedder, settings), engine=engine)


def assert_same_index(a_dir: Path, b_dir: Path, embedder) -> float:
    """Same chunks (ids, texts, order), same manifest but its times, vectors within float tolerance;
    returns the largest vector difference."""
    a, b = VectorIndex.load(a_dir, embedder), VectorIndex.load(b_dir, embedder)
    assert [c.to_record() for c in a.chunks] == [c.to_record() for c in b.chunks]
    ma, mb = ({k: v for k, v in m.manifest.items() if k not in ("created", "updated")} for m in (a, b))
    assert ma == mb
    diff = float(np.abs(a.vectors - b.vectors).max()) if len(a) else 0.0
    cos = np.einsum("ij,ij->i", a.vectors, b.vectors) / (np.linalg.norm(a.vectors, axis=1) * np.linalg.norm(b.vectors, axis=1))
    print(f"max |a-b| {diff:.2e}, min cosine {cos.min():.6f}")
    assert diff < 2e-3, diff  # bf16 on this CPU; other batch cuts and thread counts move the last bits
    assert cos.min() > 0.9999, cos.min()
    return diff


def report_facts(r) -> dict:
    d = r.to_dict()
    return {k: v for k, v in d.items() if k not in ("seconds", "index_dir")}


@pytest.mark.slow  # starts the module's Ray cluster
@needs_ray
def test_local_cluster_listens_on_loopback_only(cluster):
    ray = cluster.ray()
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
    assert cluster.resources()["CPU"] == 2


@pytest.mark.slow
@needs_ray
def test_ray_build_equals_local_build_and_updates_alike(cluster, small_corpus, tmp_path, embedder):
    from rag.index.ray_engine import RayEngine

    # one file and two texts per call: several batches, so both workers of each stage get work
    engine = RayEngine(cluster, workers=2, files_per_batch=1, texts_per_batch=2)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    seen: list[tuple[str, int, int]] = []
    r_local = build(small_corpus, local, embedder)
    r_ray = build_index(small_corpus, on_ray, embedder, make_chunker(embedder, Settings(index_dir=on_ray)),
                        engine=engine, on_progress=lambda *a: seen.append(a))
    assert report_facts(r_ray) == report_facts(r_local) and r_ray.chunks_embedded == r_ray.chunks_total > 0
    assert ("read", 3, 3) in seen and ("embed", r_ray.chunks_embedded, r_ray.chunks_embedded) in seen
    assert engine.stats["read"]["workers"] == 2 and engine.stats["read"]["items"] == 3
    assert engine.stats["embed"]["workers"] == 2 and engine.stats["embed"]["items"] == r_ray.chunks_embedded
    assert_same_index(local, on_ray, embedder)

    # incremental: a changed, an added, a deleted and an unreadable file, on both
    (small_corpus / "sampling.txt").write_text("Greedy decoding always picks the most likely next token.",
                                               encoding="utf-8")
    (small_corpus / "new.md").write_text("# RAG\n\nRetrieval augmented generation adds passages to the prompt.",
                                         encoding="utf-8")
    (small_corpus / "fine-tuning.md").unlink()
    (small_corpus / "broken.pdf").write_bytes(b"%PDF-1.4 nonsense")
    r_local = build(small_corpus, local, embedder)
    r_ray = build(small_corpus, on_ray, embedder, engine=engine)
    assert report_facts(r_ray) == report_facts(r_local)
    assert r_ray.added == ["new.md"] and r_ray.changed == ["sampling.txt"] and r_ray.deleted == ["fine-tuning.md"]
    assert r_ray.chunks_embedded == r_local.chunks_embedded < r_ray.chunks_total  # attention.md reused
    assert [s.source for s in r_ray.skipped] == ["broken.pdf"]
    assert_same_index(local, on_ray, embedder)

    # nothing changed: no pipeline runs, the generation stays
    gen = VectorIndex.load(on_ray, embedder).generation
    assert build(small_corpus, on_ray, embedder, engine=engine).nothing_changed
    assert VectorIndex.load(on_ray, embedder).generation == gen


@pytest.mark.slow
@needs_ray
def test_cli_indexes_on_a_cluster_it_did_not_start(cluster, small_corpus, tmp_path, embedder):
    """`rag index --engine ray --address` in another process joins this module's cluster."""
    address = cluster.ray().get_runtime_context().gcs_address
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    r_local = build(small_corpus, local, embedder)
    proc = subprocess.run([sys.executable, "-m", "rag.cli", "index", str(small_corpus), "--index-dir", str(on_ray),
                           "--engine", "ray", "--address", address, "--ray-workers", "2", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["added"] == r_local.added and report["chunks_embedded"] == r_local.chunks_embedded
    assert_same_index(local, on_ray, embedder)


def test_ray_flags_need_engine_ray(small_corpus, tmp_path):
    from rag.cli import cli

    for flags in (["--address", "127.0.0.1:6379"], ["--ray-workers", "2"], ["--gpus-per-worker", "1"]):
        result = CliRunner().invoke(cli, ["index", str(small_corpus), "--index-dir", str(tmp_path / "i"), *flags])
        assert result.exit_code == 2 and "need --engine ray" in result.output
    assert not (tmp_path / "i").exists()


def test_a_dead_address_fails_fast_in_one_line(small_corpus, tmp_path):
    from rag.cli import cli

    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, ["index", str(small_corpus), "--index-dir", str(tmp_path / "i"),
                                      "--engine", "ray", "--address", "127.0.0.1:1"])
    if NO_RAY:
        assert result.exit_code == 1 and "pip install -e '.[ray]'" in result.output
        return
    assert result.exit_code == 1, result.output
    assert "cannot connect to the Ray cluster at 127.0.0.1:1" in result.output and "ray start --head" in result.output
    assert result.output.count("\n") == 1 and time.perf_counter() - t0 < 60


def test_without_ray_installed_the_error_names_the_extra(monkeypatch):
    from rag.index.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when the extra is not installed
    with pytest.raises(RagError, match=r"needs Ray, which is not installed: install the ray extra: pip install -e"):
        import_ray()


NO_RAY_IMPORT = """
import json, sys
from rag.cli import cli
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))))
"""


@pytest.mark.slow  # a subprocess that loads torch and builds an index
def test_rag_index_without_engine_ray_never_imports_ray(small_corpus, tmp_path):
    proc = subprocess.run([sys.executable, "-c", NO_RAY_IMPORT, "index", str(small_corpus), "--index-dir",
                           str(tmp_path / "i"), "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == []
    assert json.loads("\n".join(lines[:-1]))["chunks_embedded"] > 0  # it really built the index
