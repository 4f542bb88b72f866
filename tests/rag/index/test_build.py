"""Index: build, incremental add/change/delete, atomic saves under a kill, embedder mismatch refused."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from rag.api import make_chunker
from rag.errors import IndexMismatch, IndexNotFound, RagError
from rag.index.build import build_index
from rag.index.embeddings import Embedder, bundled_model_path
from rag.index.store import VectorIndex, current_generation
from tests.conftest import ROOT


def build(corpus, settings, embedder, **kw):
    return build_index(corpus, settings.index_dir, embedder, make_chunker(embedder, settings), **kw)


def test_build_then_nothing_changed(small_corpus, settings, embedder):
    r1 = build(small_corpus, settings, embedder)
    assert r1.wrote and sorted(r1.added) == ["fine-tuning.md", "sampling.txt", "week2/attention.md"]
    assert r1.chunks_embedded == r1.chunks_total > 0
    gen = current_generation(settings.index_dir)
    for name in ["manifest.json", "index.faiss", "vectors.npy", "chunks.jsonl", "bm25/format.json"]:
        assert (gen / name).is_file(), name
    manifest = json.loads((gen / "manifest.json").read_text())
    assert manifest["embedding"]["model_id"] == embedder.model_id and manifest["embedding"]["dim"] == 384
    assert set(manifest["files"]) == set(r1.added) and manifest["counts"]["chunks"] == r1.chunks_total

    r2 = build(small_corpus, settings, embedder)
    assert r2.nothing_changed and r2.chunks_embedded == 0 and len(r2.unchanged) == 3
    assert current_generation(settings.index_dir) == gen


def test_incremental_add_change_delete(small_corpus, settings, embedder):
    build(small_corpus, settings, embedder)
    before = VectorIndex.load(settings.index_dir, embedder)
    att_before = [c for c in before.chunks if c.source == "week2/attention.md"]

    (small_corpus / "new.md").write_text("# RAG\n\nRetrieval augmented generation adds passages to the prompt.",
                                         encoding="utf-8")
    (small_corpus / "sampling.txt").write_text("Greedy decoding always picks the most likely next token.",
                                               encoding="utf-8")
    (small_corpus / "fine-tuning.md").unlink()
    r = build(small_corpus, settings, embedder)
    assert r.added == ["new.md"] and r.changed == ["sampling.txt"] and r.deleted == ["fine-tuning.md"]
    assert r.unchanged == ["week2/attention.md"]
    assert r.chunks_embedded == 2  # the new file's and the changed file's chunk only

    after = VectorIndex.load(settings.index_dir, embedder)
    sources = {c.source for c in after.chunks}
    assert sources == {"new.md", "sampling.txt", "week2/attention.md"}
    assert not any("LoRA" in c.text for c in after.chunks)
    # unchanged file: same chunks, same vectors (reused, not re-embedded)
    att_after = [c for c in after.chunks if c.source == "week2/attention.md"]
    assert [c.id for c in att_after] == [c.id for c in att_before]
    np.testing.assert_array_equal(after.vectors[after.pos_by_id[att_after[0].id]],
                                  before.vectors[before.pos_by_id[att_before[0].id]])
    # the FAISS ids are the chunk ids
    assert set(after.faiss.id_map_to_numpy() if hasattr(after.faiss, "id_map_to_numpy") else
               [after.faiss.id_map.at(i) for i in range(after.faiss.ntotal)]) == {c.id for c in after.chunks}


def test_unreadable_edit_keeps_previous_version(small_corpus, settings, embedder):
    build(small_corpus, settings, embedder)
    (small_corpus / "sampling.txt").write_bytes(b"\x00\x00binary garbage\x00" * 20)
    (small_corpus / "broken.pdf").write_bytes(b"%PDF-1.4 nonsense")
    r = build(small_corpus, settings, embedder)
    assert r.kept_previous == ["sampling.txt"]
    assert {s.source for s in r.skipped} == {"sampling.txt", "broken.pdf"}
    idx = VectorIndex.load(settings.index_dir, embedder)
    assert any("Temperature scales the logits" in c.text for c in idx.chunks)


def test_crash_mid_build_leaves_old_index(small_corpus, settings, embedder):
    build(small_corpus, settings, embedder)
    gen = current_generation(settings.index_dir)
    (small_corpus / "extra.md").write_text("# Extra\n\nQuantization stores weights in 8 bits.", encoding="utf-8")

    def boom(stage, done, total):
        if stage == "embed":
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        build(small_corpus, settings, embedder, on_progress=boom)
    assert current_generation(settings.index_dir) == gen
    assert len(VectorIndex.load(settings.index_dir, embedder)) > 0


KILL_SCRIPT = r"""
import os, signal, sys
from pathlib import Path
import rag.index.bm25
from rag.api import index_corpus
from rag.config import Settings

real_save = rag.index.bm25.BM25Index.save
def save_then_die(self, folder):
    real_save(self, folder)          # half the new generation is on disk...
    os.kill(os.getpid(), signal.SIGKILL)   # ...and the process is killed before it is published
rag.index.bm25.BM25Index.save = save_then_die
index_corpus(Path(sys.argv[1]), Settings(index_dir=Path(sys.argv[2])))
"""


def test_sigkill_during_save_leaves_previous_index_loadable(small_corpus, settings, embedder, tmp_path):
    build(small_corpus, settings, embedder)
    gen = current_generation(settings.index_dir)
    n_before = len(VectorIndex.load(settings.index_dir, embedder))
    (small_corpus / "extra.md").write_text("# Extra\n\nQuantization stores weights in 8 bits.", encoding="utf-8")
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(small_corpus), str(settings.index_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(settings.index_dir.glob(".gen-*.tmp")), "the killed build should have left a partial temp dir"
    assert current_generation(settings.index_dir) == gen
    assert len(VectorIndex.load(settings.index_dir, embedder)) == n_before
    # and the next build completes and publishes the new file
    r = build(small_corpus, settings, embedder)
    assert r.added == ["extra.md"]


def test_embedder_mismatch_is_refused(small_corpus, settings, embedder, tmp_path):
    build(small_corpus, settings, embedder)
    other_path = tmp_path / "other-model"
    shutil.copytree(bundled_model_path(), other_path)
    other = Embedder(str(other_path))
    with pytest.raises(IndexMismatch) as exc:
        VectorIndex.load(settings.index_dir, other)
    msg = str(exc.value)
    assert "sentence-transformers/all-MiniLM-L6-v2" in msg and str(other_path) in msg and "--rebuild" in msg
    with pytest.raises(IndexMismatch):
        build(small_corpus, settings, other)
    r = build(small_corpus, settings, other, rebuild=True)
    assert r.wrote and r.chunks_embedded == r.chunks_total


def test_missing_and_damaged_index_messages(settings, small_corpus, embedder):
    with pytest.raises(IndexNotFound, match="rag index"):
        VectorIndex.load(settings.index_dir, embedder)
    build(small_corpus, settings, embedder)
    gen = current_generation(settings.index_dir)
    (gen / "vectors.npy").write_bytes(b"not numpy")
    with pytest.raises(RagError, match="damaged"):
        VectorIndex.load(settings.index_dir, embedder)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_types(small_corpus, settings, embedder, kind):
    build(small_corpus, settings, embedder, faiss_type=kind)
    idx = VectorIndex.load(settings.index_dir, embedder)
    assert idx.manifest["faiss"]["type"] == kind
    q = embedder.encode_query("What does LoRA freeze?")
    pos, _ = idx.search_dense(q, 1)[0]
    assert "LoRA" in idx.chunks[pos].text
