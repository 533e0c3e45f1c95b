"""Ray start-up: a sweep joins a cluster only when asked; otherwise each gets a private local Ray.
Its console is quiet: Ray's own messages go to Ray's log directory unless --verbose."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

HOLD_RAY = textwrap.dedent("""
    import sys, time
    import ray
    from rrf_ray.engine.ray_runtime import init_ray
    init_ray(None, num_cpus=1, dashboard=False)
    @ray.remote(num_cpus=0.1)
    def ping():
        return "pong"
    print("READY", ray.get(ping.remote()), flush=True)
    if sys.argv[1] == "hold":
        time.sleep(300)
    time.sleep(2)
    print("STILL", ray.get(ping.remote()), flush=True)
""")


def start(mode: str, **env_vars: str) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env_vars}
    return subprocess.Popen([sys.executable, "-c", HOLD_RAY, mode], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 120) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith(marker):
            return lines
    raise AssertionError(f"no {marker!r} line; got: {lines[-20:]}")


@pytest.mark.slow  # starts Ray
def test_private_rays_a_stale_ray_start_record_and_a_live_one():
    """Three drivers, two Ray starts (CI time). /tmp/ray/ray_current_cluster outlives a Ray that was
    killed (not `ray stop`ped): joining it would wait minutes for a GCS that never answers, so a
    driver starts its own Ray with a note. A live record is joined. A second driver meanwhile gets a
    private Ray of its own, and the first dying with its Ray leaves the second's working."""
    import shutil
    import socket
    import tempfile
    with socket.socket() as free:  # a port nothing listens on once closed
        free.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{free.getsockname()[1]}"
    ray_tmp = Path(tempfile.mkdtemp(dir="/tmp", prefix="rt"))  # short: Ray's socket paths live under it
    record = ray_tmp / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    procs = []

    def launch(mode: str, **env_vars: str) -> subprocess.Popen:
        procs.append(start(mode, RAY_TMPDIR=str(ray_tmp), **env_vars))
        return procs[-1]

    def gcs(lines: list[str]) -> str:
        return next(ln for ln in lines if ln.startswith("[ray]")).split("(")[1].split(")")[0]

    try:
        record.write_text(dead)
        started = time.time()
        first = launch("hold")
        first_lines = read_until(first, "READY", timeout=180)
        assert time.time() - started < 150  # not the minutes a dead GCS address costs
        assert any(f"ignoring the stale `ray start` record ({dead}" in line for line in first_lines), first_lines
        assert any("started a private local Ray" in line for line in first_lines), first_lines
        live = gcs(first_lines)

        record.write_text(live)  # as `ray start` records its GCS
        joined = launch("run", RAY_AUTH_MODE="token")  # a local Ray uses token auth
        lines = read_until(joined, "STILL", timeout=180)
        assert joined.wait(timeout=60) == 0, lines[-20:]
        assert any(f"joined the Ray cluster at {live}" in line for line in lines), lines
        assert lines[-1] == "STILL pong"

        record.write_text(dead)
        second = launch("run")
        second_lines = read_until(second, "READY", timeout=180)
        assert any("started a private local Ray" in line for line in second_lines), second_lines
        assert gcs(second_lines) != live  # two private Rays at once
        os.killpg(first.pid, signal.SIGKILL)  # the first driver dies with its Ray ...
        first.wait()
        assert read_until(second, "STILL")[-1] == "STILL pong"  # ... and the second's Ray still works
        assert second.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


CHATTY = textwrap.dedent("""
    import logging, sys, time
    import ray
    from rrf_ray.engine.ray_runtime import init_ray, set_verbose
    set_verbose(sys.argv[1] == "verbose")
    init_ray(None, num_cpus=1, dashboard=False)
    logging.getLogger("ray.tune").warning("a warning of Ray's in the driver")
    @ray.remote(num_cpus=0.1)
    def chatty():
        print("[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:1: an error line of Ray's C++", flush=True)
        print("Moving model to device: cpu", flush=True)
        print("a warning of Ray's in a worker", file=sys.stderr, flush=True)
        print("[toy-run] step 1/1 loss 0.5", flush=True)
        return 1
    ray.get(chatty.remote())
    @ray.remote(num_cpus=0.1)
    class Run:  # two processes printing step lines that differ only in words with digits
        def step(self, label):
            for step in (1000, 2000):
                print(f"[{label}] step {step}/10000 loss 0.3490 (1000 samples/s)", flush=True)
    runs = [Run.remote() for _ in range(2)]
    ray.get([run.step.remote(label) for run, label in zip(runs, ["base-cheetah-1f2e", "expert-cheetah-9a0b"])])
    time.sleep(5)  # Ray's log monitor forwards worker lines to the driver within a second or so
    print("DONE", flush=True)
""")
RAY_LINES = ("core_worker.cc:1: an error line", "Moving model to device", "a warning of Ray's in a worker",
             "a warning of Ray's in the driver")


def run_chatty(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", CHATTY, mode], capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0 and "DONE" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout + r.stderr


@pytest.mark.slow  # starts Ray
def test_the_console_is_quiet_unless_verbose_and_says_where_rays_messages_went():
    quiet = run_chatty("quiet")
    assert "[toy-run] step 1/1 loss 0.5" in quiet  # a step line, as training runs print them
    for label in ("base-cheetah-1f2e", "expert-cheetah-9a0b"):  # two trials' progress, neither folded away
        for step in (1000, 2000):
            assert f"[{label}] step {step}/10000 loss 0.3490" in quiet, quiet
    assert "across cluster" not in quiet, quiet
    for line in RAY_LINES:
        assert line not in quiet, quiet
    logs = Path(re.search(r"\[ray\] Ray's own messages: (\S+) ", quiet).group(1))
    assert "a warning of Ray's in the driver" in (logs / "rrf_ray-driver.log").read_text()
    workers = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*"))
    assert "core_worker.cc:1: an error line" in workers and "a warning of Ray's in a worker" in workers

    verbose = run_chatty("verbose")
    for line in (*RAY_LINES, "[toy-run] step 1/1 loss 0.5"):
        assert line in verbose, verbose


def test_training_runs_give_ray_data_its_options_without_the_deprecated_one(ray_local):
    """Ray Train's default DataConfig copies `exclude_resources` and so warns in every reward
    training run; the engine's data_config does not (the warning is fixed where it came from)."""
    import warnings

    import ray.data
    import ray.train
    from ray.util.annotations import RayDeprecationWarning

    from rrf_ray.engine.training import data_config

    def deprecations(config) -> list:
        datasets = {"train": ray.data.from_items([{"x": i} for i in range(8)])}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config.configure(datasets, world_size=1, worker_handles=None, worker_node_ids=None)
        return [w for w in caught if issubclass(w.category, RayDeprecationWarning)]

    assert deprecations(ray.train.DataConfig(datasets_to_split=["train"]))  # what Ray's default does
    assert not deprecations(data_config(["train"]))
