"""A cluster as a user runs one: its storage a bucket, a node lost in the middle of a trial.

A real multi-node Ray on one machine (`ray.cluster_utils.Cluster`: a head with no CPUs and two
worker nodes, each its own raylet), the tiny sweep driven by `python -m rrf_ray.sweep --address`
with `--storage s3://...` (a real S3 protocol server, moto's; each driver keeps a local mirror).
Once the first trial's expert diffuser is training, the node running it is killed (raylet,
object store and every worker process on it): the node of its Ray Train worker, or, for a
1-worker CPU run (which trains in the trial's own process), of the Tune trial. The training
run fails, the Tune trial errors, and Tune's retry (resources.max_failures) runs the trial
again to the end. Everything a user keeps ends up in the bucket: a second driver on a fresh
mirror resumes the sweep without recomputing a trial. One sweep for both (CI time).
"""

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from rrf_ray.engine.storage import SweepStorage

pytestmark = pytest.mark.slow


TRAINING_PROCESSES = ("RayTrainWorker", "ImplicitFunc")  # a Train worker, or a Tune trial training in itself


def _train_worker_node(nodes) -> object | None:
    """The cluster node whose raylet spawned the process that trains (see TRAINING_PROCESSES), if one is running."""
    raylets = {}
    for node in nodes:
        for info in node.all_processes.get("raylet", []):
            raylets[info.process.pid] = node
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if not any(name in cmdline for name in TRAINING_PROCESSES):
            continue
        try:
            for parent in proc.parents():
                if parent.pid in raylets:
                    return raylets[parent.pid]
        except psutil.NoSuchProcess:
            continue
    return None


def test_a_cluster_on_a_bucket_retries_a_trial_whose_node_is_lost_and_a_fresh_driver_resumes(s3_uri, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    nodes = [cluster.add_node(num_cpus=3, object_store_memory=200 * 2**20) for _ in range(2)]
    log = tmp_path / "sweep.log"
    args = [sys.executable, "-m", "rrf_ray.sweep", "maze2d-tiny", "--storage", s3_uri, "--address", cluster.address,
            "--set", "goals=[3]", "--set", "pregen.algorithm=pregenerate"]  # Algorithm 2 (the others run 1)
    mirror = {"RRF_RAY_CACHE": str(tmp_path / "driver-1")}
    proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **mirror})
    try:
        removed = None
        deadline = time.time() + 600
        while removed is None and time.time() < deadline:
            assert proc.poll() is None, f"the sweep ended before the trial started:\n{log.read_text()[-3000:]}"
            training = any("[expert-" in line and "] starting:" in line for line in log.read_text().splitlines())
            node = _train_worker_node(nodes) if training else None
            if node is not None:
                cluster.remove_node(node, allow_graceful=False)
                removed = node
            time.sleep(0.5)
        assert removed is not None, "no process training the expert appeared within 600 s"
        assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]

        output = log.read_text()
        expert_starts = [line for line in output.splitlines()
                         if "[expert-" in line and ("] starting:" in line or "] resuming at step" in line)]
        assert len(expert_starts) >= 2, "the expert run did not start again after its node was lost"
        assert "errored after" in output, "Tune did not record the trial's failure"
        storage = SweepStorage(s3_uri, "maze2d-tiny")
        result = json.loads(storage.read_text("trials/umaze-goal3-seed0/result.json"))
        assert result["status"] == "ok", result.get("error")
        assert result["metrics"]["n_base_windows"] > 0
        for name in ("report.md", "results.csv", "figures/umaze.png", "spec.json",
                     "stage3-trials/tuner.pkl", "trials/umaze-goal3-seed0/heatmap.png"):
            assert storage.exists(name), name
        assert "umaze-goal3-seed0" in storage.read_text("results.csv")
        assert storage.exists("train"), "Ray Train's runs should be in the bucket too"

        # a used bucket path without --resume is refused; with it, a driver on a fresh mirror finishes at once
        again = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, **mirror})
        assert again.returncode == 2 and "--resume" in again.stderr
        fresh = {**os.environ, "RRF_RAY_CACHE": str(tmp_path / "driver-2")}
        again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600, env=fresh)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert json.loads(storage.read_text("trials/umaze-goal3-seed0/result.json")) == result
        assert "] starting:" not in again.stdout, "a finished trial was recomputed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cluster.shutdown()
