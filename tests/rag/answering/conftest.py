"""Fixtures of the answering tests: a tiny real index of the shared small corpus (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_index(tmp_path_factory, embedder):
    from rag.api import make_chunker
    from rag.config import Settings
    from rag.index.build import build_index
    from tests.conftest import write_small_corpus

    base = tmp_path_factory.mktemp("grounded")
    corpus = write_small_corpus(base / "corpus")
    settings = Settings(index_dir=base / "index", corpus_dir=corpus, max_new_tokens=12, top_k=3)
    build_index(corpus, settings.index_dir, embedder, make_chunker(embedder, settings))
    return settings
