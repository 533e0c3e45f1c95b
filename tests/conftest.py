"""Shared fixtures: one real local Ray per test session, and small real datasets on disk."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

# Tests must never touch the user's ~/.minari.
os.environ.setdefault("MINARI_DATASETS_PATH", "/tmp/rrf_ray-test-minari-unused")

# Every Ray the tests start, and every `ray start` record a sweep started without --address could
# join, lives in a directory of this test process's own, never the user's: a sweep under test must
# not join a `ray start` cluster the developer has running here. Removed when the session passes.
RAY_TMPDIR = os.environ["RAY_TMPDIR"] = f"/tmp/rrft{os.getpid()}"  # short: Ray's socket paths live under it
os.makedirs(RAY_TMPDIR, exist_ok=True)

# Fixtures that start Ray (or a server standing in for a cluster's storage): a test that uses one
# belongs in the slow tier, which CI runs; `pytest -m "not slow"` is the quick loop without them.
SLOW_FIXTURES = {"ray_local", "s3_uri"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0:
        shutil.rmtree(RAY_TMPDIR, ignore_errors=True)


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


# The tests' S3: a bucket on a local moto server, as a user's MinIO or S3 would be.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_uri():
    """A bucket on a local moto S3 server; the URI carries the endpoint like a MinIO user's would."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1").create_bucket(Bucket="rrf")
    yield f"s3://rrf/sweeps?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
