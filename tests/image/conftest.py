"""Image fixtures: the digits pipeline (rrf_ray.image.digits), trained once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def run_digits_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m rrf_ray.data digits-pipeline ...` in a process of its own, on a private local Ray.

    A subprocess, not main() here: the build starts (and ends) its own Ray, which must not be
    the session's `ray_local` one or a cluster running on this machine (--address local).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rrf_ray.data", "digits-pipeline", *args, "--address", "local",
                           "--no-progress"], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).resolve().parents[2])


@pytest.fixture(scope="session")
def digits_cli():
    """run_digits_cli, for tests that call the CLI themselves (a conftest is not importable by name)."""
    return run_digits_cli


@pytest.fixture(scope="session")
def digits_pipeline(tmp_path_factory) -> Path:
    """The tiny preset's digits pipeline directory (StableDiffusionPipeline files, digits.json,
    holdout.npz, prompts/), built once through the CLI. One torch thread: on a 2-core machine
    a second thread only spins against the test session's other work."""
    out = tmp_path_factory.mktemp("digits") / "pipeline"
    start = time.time()
    result = run_digits_cli("--out", str(out), "--preset", "tiny", "--threads", "1")
    if result.returncode != 0:
        raise RuntimeError(f"digits-pipeline failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    print(f"\n[digits_pipeline] tiny preset built in {time.time() - start:.0f} s:\n{result.stdout}")
    return out
