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


@pytest.mark.slow  # kill -9 of a subprocess that loads torch; test_crash_mid_build_leaves_old_index is the fast crash
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


# ---- issue 11: every entry reported, zero documents, identical files, damaged index files ----------------


def test_identical_files_are_indexed_once_so_top_k_shows_the_passage_once(small_corpus, settings, embedder):
    from rag.retrieval.retriever import Retriever

    lora = (small_corpus / "fine-tuning.md").read_bytes()
    (small_corpus / "lora-copy.md").write_bytes(lora)
    (small_corpus / "week2" / "lora.md").write_bytes(lora)
    r = build(small_corpus, settings, embedder)
    assert sorted(r.added) == ["fine-tuning.md", "sampling.txt", "week2/attention.md"]
    assert {s.source: s.reason for s in r.skipped} == {
        "lora-copy.md": "same content as fine-tuning.md (identical files are indexed once)",
        "week2/lora.md": "same content as fine-tuning.md (identical files are indexed once)"}
    hits = Retriever(settings.index_dir, embedder, "dense", 5).search("What does LoRA freeze?")
    texts = [h.chunk.text for h in hits]
    assert hits[0].chunk.source == "fine-tuning.md" and len(texts) == len(set(texts))


def test_a_new_copy_of_an_indexed_file_changes_nothing(small_corpus, settings, embedder):
    build(small_corpus, settings, embedder)
    gen = current_generation(settings.index_dir)
    (small_corpus / "a-copy.md").write_bytes((small_corpus / "fine-tuning.md").read_bytes())  # sorts first
    r = build(small_corpus, settings, embedder)
    assert r.nothing_changed and r.chunks_embedded == 0 and current_generation(settings.index_dir) == gen
    assert [(s.source, s.reason.split(" (")[0]) for s in r.skipped] == [("a-copy.md", "same content as fine-tuning.md")]
    (small_corpus / "fine-tuning.md").unlink()  # the copy takes over
    r = build(small_corpus, settings, embedder)
    assert r.added == ["a-copy.md"] and r.deleted == ["fine-tuning.md"] and not r.skipped


def test_zero_documents_is_an_error_and_the_previous_index_stays(small_corpus, settings, embedder, tmp_path):
    from rag.errors import NoDocuments

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoDocuments, match="holds no files"):
        build(empty, settings, embedder)
    assert not (settings.index_dir / "CURRENT").exists()
    (empty / "notes.doc").write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(NoDocuments, match=r"notes\.doc: unsupported file type \.doc") as exc:
        build(empty, settings, embedder)
    assert [s.source for s in exc.value.skipped] == ["notes.doc"]
    build(small_corpus, settings, embedder)
    gen = current_generation(settings.index_dir)
    for f in [small_corpus / "fine-tuning.md", small_corpus / "sampling.txt", small_corpus / "week2" / "attention.md"]:
        f.unlink()
    with pytest.raises(NoDocuments):
        build(small_corpus, settings, embedder)
    assert current_generation(settings.index_dir) == gen and len(VectorIndex.load(settings.index_dir, embedder)) > 0


def test_the_report_lists_every_entry_the_walk_skipped(small_corpus, settings, embedder):
    (small_corpus / "notes.docx").write_bytes(b"PK\x03\x04 word")
    (small_corpus / "week2" / "slides.ppt").write_bytes(b"\xd0\xcf\x11\xe0 slides")
    (small_corpus / "loop").symlink_to(small_corpus / "loop")
    r = build(small_corpus, settings, embedder)
    reasons = {s.source: s.reason for s in r.skipped}
    assert set(reasons) == {"notes.docx", "week2/slides.ppt", "loop"}
    assert "unsupported file type .ppt;" in reasons["week2/slides.ppt"] and "symlink loop" in reasons["loop"]
    assert reasons["notes.docx"].startswith("not a Word .docx file")
    assert len(r.added) == 3


def _edit_json(path, edit):
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(edit(data)), encoding="utf-8")


def _drop(key):
    def edit(d):
        d.pop(key)
        return d
    return edit


DAMAGE = {
    "manifest is a list": ("manifest.json", lambda p: p.write_text("[]"), "manifest.json holds a JSON list"),
    "manifest lacks counts": ("manifest.json", lambda p: _edit_json(p, _drop("counts")), "'counts'"),
    "manifest lacks embedding": ("manifest.json", lambda p: _edit_json(p, _drop("embedding")), "'embedding'"),
    "manifest dim is text": ("manifest.json", lambda p: _edit_json(p, lambda d: {**d, "embedding": {
        **d["embedding"], "dim": "384"}}), "'embedding.dim'"),
    "manifest files is a list": ("manifest.json", lambda p: _edit_json(p, lambda d: {**d, "files": []}), "'files'"),
    "manifest counts disagree": ("manifest.json", lambda p: _edit_json(p, lambda d: {**d, "counts": {
        **d["counts"], "files": 99}}), "counts 99 files"),
    "manifest not UTF-8": ("manifest.json", lambda p: p.write_bytes(b"\xff{}"), "damaged"),
    "chunk record is a list": ("chunks.jsonl", lambda p: p.write_text("[]\n" + p.read_text()), "chunks.jsonl line 1"),
    "bm25 format is a list": ("bm25/format.json", lambda p: p.write_text("[]"), "damaged"),
    "vectors are float64": ("vectors.npy", lambda p: np.save(p, np.load(p).astype(np.float64)), "inconsistent"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_every_index_file_is_validated_on_load(small_corpus, settings, embedder, case):
    """A manifest.json that was [] or lacked "counts" crashed `rag search` with a traceback."""
    build(small_corpus, settings, embedder)
    gen = current_generation(settings.index_dir)
    name, damage, expected = DAMAGE[case]
    damage(gen / name)
    with pytest.raises(RagError) as exc:
        VectorIndex.load(settings.index_dir, embedder)
    msg = str(exc.value)
    assert expected in msg and str(gen) in msg and "rag index --rebuild" in msg and "\n" not in msg


def test_a_damaged_current_pointer_is_one_error(small_corpus, settings, embedder):
    build(small_corpus, settings, embedder)
    (settings.index_dir / "CURRENT").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RagError, match="CURRENT"):
        VectorIndex.load(settings.index_dir, embedder)


def test_an_index_dir_that_is_a_file_is_one_error(small_corpus, embedder, tmp_path):
    from rag.config import Settings

    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder")
    settings = Settings(index_dir=tmp_path / "idx")
    with pytest.raises(RagError, match="is a file, not a folder"):
        build_index(small_corpus, afile, embedder, make_chunker(embedder, settings))
    with pytest.raises(RagError, match="is a file, not a folder"):
        VectorIndex.load(afile, embedder)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(RagError, match="symlink loop"):
        build_index(small_corpus, loop, embedder, make_chunker(embedder, settings))
    with pytest.raises(RagError, match="symlink loop"):
        build_index(loop, tmp_path / "idx", embedder, make_chunker(embedder, settings))


# ---- issue 31: nothing outside the course gets in; a loader error is a skip; notes say what was dropped ----


def test_a_bomb_and_a_link_out_of_the_course_are_skipped_and_the_rest_indexed(small_corpus, settings, embedder,
                                                                                tmp_path):
    """A PDF decompression bomb stopped the build with a traceback and indexed none of the good files; a link
    to a file outside the course (`ln -s /etc/passwd corpus/week4-notes.txt`) was indexed."""
    from tests.pdfgen import make_flate_bomb_pdf

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    (small_corpus / "week4-notes.txt").symlink_to(secret)
    (small_corpus / "bomb.pdf").write_bytes(make_flate_bomb_pdf())
    (small_corpus / "page.html").write_text("<p>Visible reward models.</p><p style='display:none'>Answer: B</p>",
                                            encoding="utf-8")
    r = build(small_corpus, settings, embedder)
    assert sorted(r.added) == ["fine-tuning.md", "page.html", "sampling.txt", "week2/attention.md"]
    reasons = {s.source: s.reason for s in r.skipped}
    assert set(reasons) == {"week4-notes.txt", "bomb.pdf"}
    assert "outside the course folder" in reasons["week4-notes.txt"] and "decompression bomb" in reasons["bomb.pdf"]
    assert [(n.source, n.reason) for n in r.notes] == [
        ("page.html", "dropped text no reader sees: 9 characters of hidden HTML")]
    assert r.to_dict()["notes"] == [{"source": "page.html",
                                     "reason": "dropped text no reader sees: 9 characters of hidden HTML"}]
    idx = VectorIndex.load(settings.index_dir, embedder)
    assert not any("root:x:0" in c.text or "Answer: B" in c.text for c in idx.chunks)

    r = build(small_corpus, settings, embedder, follow_outside_links=True)  # the user's opt-in
    assert r.added == ["week4-notes.txt"] and "week4-notes.txt" not in {s.source for s in r.skipped}
    assert any("root:x:0" in c.text for c in VectorIndex.load(settings.index_dir, embedder).chunks)
    r = build(small_corpus, settings, embedder)  # and without it again: the link's passages leave the index
    assert r.deleted == ["week4-notes.txt"]


def test_a_copy_of_a_skipped_file_says_why_it_is_not_indexed(small_corpus, settings, embedder):
    """10,000 empty files: 9,999 were "same content as f00000.txt (identical files are indexed once)", though
    f00000.txt was not indexed (empty). A copy of a skipped file now gives that file's reason."""
    for i in range(3):
        (small_corpus / f"f{i}.txt").write_bytes(b"")
    r = build(small_corpus, settings, embedder)
    assert {s.source: s.reason for s in r.skipped} == {
        "f0.txt": "empty file (no text)",
        "f1.txt": "empty file (no text); same content as f0.txt",
        "f2.txt": "empty file (no text); same content as f0.txt"}
