"""Shared fixtures: the real bundled embedder, real corpora in tmp dirs, real indexes."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_openai import FakeServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The course adapters `raft course` installs change what `model = auto` loads: the suite (and every command it
# starts) sees an empty registry of its own, never the machine's.
_COURSE_ADAPTERS = tempfile.mkdtemp(prefix="rag-test-course-adapters-")
os.environ["RAG_COURSE_ADAPTERS_DIR"] = _COURSE_ADAPTERS
atexit.register(shutil.rmtree, _COURSE_ADAPTERS, True)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two pytest-xdist workers on 2 cores: one OpenMP/ONNX Runtime thread each (and in the commands a test
    # starts), since two workers of 2 threads each oversubscribe the cores and spin-wait 3-10x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"

LORA_MD = """# Fine-tuning

## Parameter-efficient fine-tuning

LoRA (low-rank adaptation) freezes all the weights of the pre-trained model and trains two small
low-rank matrices whose product is added to the frozen weight matrix. Only the adapter is stored.

## Full fine-tuning

Full fine-tuning updates every weight of the network and needs as much memory as pre-training.
"""

ATTENTION_MD = """# Transformers

## Self-attention

Self-attention lets every token attend to every other token of the input sequence, so the model
learns which words relate to which. Multi-head attention runs several attention heads in parallel.
"""

SAMPLING_TXT = """Generation settings

Temperature scales the logits before sampling: a low temperature gives deterministic output, a high
temperature gives more random and creative text. Top-k keeps the k most likely tokens; top-p keeps the
smallest set whose probability adds up to p.
"""


@pytest.fixture(scope="module")
def one_torch_thread():
    """Decode is memory-bound (1 thread ~ 2 threads when idle), but 2 OpenMP threads get 3-10x slower
    when other processes share the 2 cores; one thread keeps a model-heavy module's run time predictable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def embedder():
    from rag.index.embeddings import Embedder

    return Embedder("bundled")


def write_small_corpus(root: Path) -> Path:
    """The small corpus (a LoRA passage, an attention passage in week2/, a sampling text) written into `root`."""
    (root / "week2").mkdir(parents=True)
    (root / "fine-tuning.md").write_text(LORA_MD, encoding="utf-8")
    (root / "week2" / "attention.md").write_text(ATTENTION_MD, encoding="utf-8")
    (root / "sampling.txt").write_text(SAMPLING_TXT, encoding="utf-8")
    return root


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    return write_small_corpus(tmp_path / "corpus")


@pytest.fixture
def settings(tmp_path: Path):
    from rag.config import Settings

    return Settings(index_dir=tmp_path / "index", corpus_dir=tmp_path / "corpus")


@pytest.fixture
def fake_openai() -> Iterator[FakeServer]:
    """The suite's fake OpenAI-compatible server (tests/fake_openai.py) for one test: it answers "ok" until
    told otherwise with `play`, and is closed after the test."""
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def module_fake_openai() -> Iterator[FakeServer]:
    """One fake OpenAI-compatible server shared by a module's tests (each test `play`s its replies)."""
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture
def keyless(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model-server key in the environment: a test's requests carry only the key it configures."""
    monkeypatch.delenv("RAG_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture(scope="session")
def course_index(tmp_path_factory, embedder):
    """The shipped corpus indexed once per test session (retrieval tests read it, never write)."""
    from rag.api import make_chunker
    from rag.config import Settings
    from rag.index.build import build_index

    base = tmp_path_factory.mktemp("course")
    corpus = base / "corpus"
    shutil.copytree(CORPUS, corpus)
    # model "bundled": in-process tests of the pipeline keep the base model; the default on the shipped course
    # (its RAFT adapter) is what the app, `rag serve` and `rag ask` tests get (tests/rag/generation/test_course_adapter.py)
    settings = Settings(index_dir=base / "index", corpus_dir=corpus, model="bundled")
    build_index(corpus, settings.index_dir, embedder, make_chunker(embedder, settings))
    return settings


# --------------------------------------------------------------------------- the `llm` and `slow` marks
# `pytest -m "not llm and not slow"` is the developer run (under two minutes): everything that needs no
# language model (the embedder, FAISS, BM25, files, the CLI, the server's validation) except what is
# inherently slow, marked `slow` by hand: a Ray cluster, a browser, a GGUF conversion, a subprocess that
# loads torch (the installed commands end to end, kill -9 crash/resume). Keep a fast in-process test
# beside each slow one where the point allows (e.g. test_build.py's simulated crash beside its kill -9).
# The full suite (scripts/test.sh, CI) runs both marks. The `llm` mark is kept honest here rather than by
# memory: every in-process run of a causal language model (its forward pass or its loading) is counted,
# and a test that is not marked `llm` but ran one fails with a message saying so. Tests that run a model
# only in a subprocess carry the mark by hand.
_LLM_CALLS = [0]


def _count_llm_calls() -> None:
    from transformers.modeling_utils import PreTrainedModel

    if getattr(PreTrainedModel, "_course_rag_counted", False):
        return
    forward, load = PreTrainedModel.__call__, PreTrainedModel.from_pretrained.__func__

    def counted_call(self, *args, **kwargs):
        if "CausalLM" in type(self).__name__:
            _LLM_CALLS[0] += 1
        return forward(self, *args, **kwargs)

    def counted_load(cls, *args, **kwargs):
        if "CausalLM" in cls.__name__:
            _LLM_CALLS[0] += 1
        return load(cls, *args, **kwargs)

    PreTrainedModel.__call__ = counted_call
    PreTrainedModel.from_pretrained = classmethod(counted_load)
    PreTrainedModel._course_rag_counted = True


def pytest_sessionstart(session) -> None:
    _count_llm_calls()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    item.llm_calls_before = _LLM_CALLS[0]  # before module fixtures too: a model loaded there counts
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    ran_llm = _LLM_CALLS[0] > getattr(item, "llm_calls_before", _LLM_CALLS[0])
    if call.when == "call" and report.passed and ran_llm and item.get_closest_marker("llm") is None:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} loaded or ran a causal language model in-process: mark it "
                           "@pytest.mark.llm (or pytestmark = pytest.mark.llm for the module)")


# --------------------------------------------------------------------------- parallel run (pytest-xdist)
# The suite runs on two pytest-xdist workers (`-n 2 --dist loadgroup`, pyproject's addopts). A module's
# tests stay together on one worker, so its module fixtures (a GGUF conversion, a loaded model, a server)
# are made once, as in a serial run; so do the modules of tests/rag/server/ (its package fixtures: the shared
# `rag serve` processes); the two Ray modules share one worker, so that two local clusters never
# compete for the 2 CPUs they each claim. `-p no:xdist` (or `-n 0`) runs serially.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.nodeid.split("::", 1)[0]
            group = "ray" if module.endswith("test_ray.py") else module
            if module.startswith("tests/rag/server/"):
                group = "tests/rag/server"  # its modules share the package's `rag serve` processes
            item.add_marker(pytest.mark.xdist_group(group))
