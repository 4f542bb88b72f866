"""The `rag serve` processes the tests of this folder share (package scope: started once for the folder,
whose modules run on one pytest-xdist worker, see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rag.server.served import GATE_ARGS, KEY, Served, free_port, start_server


@pytest.fixture(scope="package")
def server(course_index) -> Iterator[Served]:
    """`rag serve` with the bundled base model (named: the course's default is its RAFT adapter, tested below; the
    queue tests hold the model with a reply the base model never ends): an API key, one allowed CORS origin, at
    most 4 waiting, one answer at a time (the queue tests count who runs and who waits)."""
    with start_server(course_index.index_dir, *GATE_ARGS, "--model", "bundled", "--slots", "1", key=KEY) as served:
        yield served


@pytest.fixture(scope="package")
def gate(course_index) -> Iterator[Served]:
    """The same `rag serve`, but its model is a server nobody runs: for what must be refused before any
    model is asked (validation, limits, access), without loading a language model."""
    with start_server(course_index.index_dir, *GATE_ARGS, "--model", f"http://127.0.0.1:{free_port()}/v1",
                      key=KEY) as served:
        yield served
