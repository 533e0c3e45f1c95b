"""Shared fixtures: one real local Ray per test session, and small real datasets on disk."""

from __future__ import annotations

import os

import pytest

# Tests must never touch the user's ~/.minari.
os.environ.setdefault("MINARI_DATASETS_PATH", "/tmp/rrf_ray-test-minari-unused")

# Fixtures that start Ray (or a server standing in for a cluster's storage): a test that uses one
# belongs in the slow tier, which CI runs; `pytest -m "not slow"` is the quick loop without them.
SLOW_FIXTURES = {"ray_local", "s3_uri"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray of its own (never a cluster already running on this machine). More logical
    CPUs than cores leaves headroom (docs/operations.md)."""
    import ray  # here, not at the top: the CUDA tests run on GPU machines without Ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module of tiny tensors: a thread pool only spins against the other
    work on a 2-core machine's cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
