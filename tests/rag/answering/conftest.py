"""Fixtures of the answering tests: a tiny real index of the shared small corpus (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, embedder):
    from rag.api import make_chunker
    from rag.config import Settings
    from rag.index.build import build_index
    from tests.conftest import ATTENTION_MD, LORA_MD, SAMPLING_TXT

    base = tmp_path_factory.mktemp("grounded")
    corpus = base / "corpus"
    (corpus / "week2").mkdir(parents=True)
    (corpus / "fine-tuning.md").write_text(LORA_MD, encoding="utf-8")
    (corpus / "week2" / "attention.md").write_text(ATTENTION_MD, encoding="utf-8")
    (corpus / "sampling.txt").write_text(SAMPLING_TXT, encoding="utf-8")
    settings = Settings(index_dir=base / "index", corpus_dir=corpus, max_new_tokens=12, top_k=3)
    build_index(corpus, settings.index_dir, embedder, make_chunker(embedder, settings))
    return settings
