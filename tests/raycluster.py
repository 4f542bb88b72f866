"""The local Ray cluster the Ray tests share: 127.0.0.1 only, 2 CPUs (two workers), 512 MiB object store."""

from __future__ import annotations

import importlib.util
import os

import pytest

# Every cluster here is on this machine: keep Ray on loopback even when a test that joins one imports it first.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
NO_RAY = importlib.util.find_spec("ray") is None
needs_ray = pytest.mark.skipif(NO_RAY, reason="ray is not installed: pip install -e '.[ray]' (scripts/test.sh does)")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module: 2 CPUs, 512 MiB object store, loopback only; shut down after."""
    if NO_RAY:
        pytest.skip("ray is not installed: pip install -e '.[ray]' (scripts/test.sh does)")
    from rag.index.ray_engine import RayCluster

    c = RayCluster(num_cpus=2)
    c.ray()
    yield c
    c.close()
