"""The mean-pooling encoder (rag/index/pooling.py): sentence-transformers' vectors bit for bit, only for the
models it recognises, and a fresh embedder that never imports sentence-transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rag.index.embeddings import Embedder, bundled_model_path
from rag.index.pooling import MeanPoolingEncoder, plain_mean_pooling
from tests.conftest import CORPUS, ROOT

EDGE_CASES = ["", "  leading and trailing spaces  ", "What does LoRA freeze?", "word " * 600,
              "\n\nnew lines\tand tabs\n", "Ünïcödé and emoji 🙂", "a"]


def _texts() -> list[str]:
    """The course's paragraphs (varied lengths, some past the 256-piece window) and edge cases."""
    paragraphs = [p for f in sorted(CORPUS.iterdir()) for p in f.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return paragraphs[:120] + EDGE_CASES


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vectors_equal_sentence_transformers_bit_for_bit(dtype: str) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    path = bundled_model_path()
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else None
    theirs = SentenceTransformer(str(path), device="cpu",
                                 **({"model_kwargs": {"dtype": torch_dtype}} if torch_dtype else {}))
    ours = MeanPoolingEncoder(path, plain_mean_pooling(path), torch_dtype)
    texts = _texts()
    for batch_size in (16, 5):
        expected = theirs.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        got = ours.encode(texts, batch_size=batch_size)
        assert got.dtype == np.float32 and got.shape == (len(texts), 384)
        assert np.array_equal(got, expected)
    assert ours.max_seq_length == theirs.max_seq_length == 256
    assert ours.get_sentence_embedding_dimension() == 384


def _copy_of_bundled(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(bundled_model_path(), folder)
    return folder


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change", ["cls pooling", "mean and max", "dense layer", "lower case", "prompt",
                                    "no modules.json", "pooling excludes prompt"])
def test_only_a_plain_mean_pooling_model_is_recognised(tmp_path: Path, change: str) -> None:
    folder = _copy_of_bundled(tmp_path)
    assert plain_mean_pooling(folder) == 256
    pooling = folder / "1_Pooling" / "config.json"
    if change == "cls pooling":
        _edit(pooling, pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    elif change == "mean and max":
        _edit(pooling, pooling_mode_max_tokens=True)
    elif change == "pooling excludes prompt":
        _edit(pooling, include_prompt=False)
    elif change == "dense layer":
        modules = json.loads((folder / "modules.json").read_text())
        modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        (folder / "modules.json").write_text(json.dumps(modules))
    elif change == "lower case":
        _edit(folder / "sentence_bert_config.json", do_lower_case=True)
    elif change == "prompt":
        _edit(folder / "config_sentence_transformers.json", prompts={"query": "query: "})
    else:
        (folder / "modules.json").unlink()
    assert plain_mean_pooling(folder) is None
    assert plain_mean_pooling("sentence-transformers/all-MiniLM-L6-v2") is None  # a hub id: not a folder


def test_other_models_still_load_through_sentence_transformers(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    folder = _copy_of_bundled(tmp_path)
    _edit(folder / "1_Pooling" / "config.json", pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    cls = Embedder(str(folder), dtype="float32")
    mean = Embedder(str(_copy_of_bundled(tmp_path / "plain")), dtype="float32")
    assert isinstance(cls.model, SentenceTransformer) and isinstance(mean.model, MeanPoolingEncoder)
    a, b = cls.encode(["LoRA freezes the base weights."]), mean.encode(["LoRA freezes the base weights."])
    assert a.shape == b.shape == (1, 384) and np.isclose(np.linalg.norm(a), 1.0)
    assert float(a[0] @ b[0]) < 0.999  # CLS pooling really ran: a different vector


def test_a_fresh_embedder_does_not_import_sentence_transformers() -> None:
    code = ("import sys\nfrom rag.index.embeddings import Embedder\ne = Embedder()\n"
            "v = e.encode_query('What does LoRA freeze?')\nassert v.shape == (e.dim,), v.shape\n"
            "print(sorted(m for m in ('sentence_transformers', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
