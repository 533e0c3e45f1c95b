"""A node lost in the middle of a trial: Tune retries the trial on the surviving node and the sweep completes.

A real multi-node Ray on one machine (`ray.cluster_utils.Cluster`: a head with no CPUs and two
worker nodes, each its own raylet), the tiny sweep driven by `python -m rrf_ray.sweep --address`.
Once the first trial's expert diffuser is training, the node running it is killed (raylet,
object store and every worker process on it): the node of its Ray Train worker, or, for a
1-worker CPU run (which trains in the trial's own process), of the Tune trial. The training
run fails, the Tune trial errors, and Tune's retry (resources.max_failures) runs the trial
again to the end.
"""

import json
import subprocess
import sys
import time

import psutil
import pytest

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


def test_trial_on_a_removed_node_is_retried_and_completes(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    nodes = [cluster.add_node(num_cpus=3, object_store_memory=200 * 2**20) for _ in range(2)]
    log = tmp_path / "sweep.log"
    root = tmp_path / "maze2d-tiny"
    proc = subprocess.Popen([sys.executable, "-m", "rrf_ray.sweep", "maze2d-tiny", "--storage", str(tmp_path),
                             "--address", cluster.address, "--set", "goals=[3]",
                             "--set", "pregen.algorithm=pregenerate"],  # Algorithm 2 (the others run 1)
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
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
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cluster.shutdown()

    output = log.read_text()
    result = json.loads((root / "trials" / "umaze-goal3-seed0" / "result.json").read_text())
    assert result["status"] == "ok", result.get("error")
    assert result["metrics"]["n_base_windows"] > 0
    expert_starts = [line for line in output.splitlines()
                     if "[expert-" in line and ("] starting:" in line or "] resuming at step" in line)]
    assert len(expert_starts) >= 2, "the expert run did not start again after its node was lost"
    assert "errored after" in output, "Tune did not record the trial's failure"
    assert (root / "report.md").exists()
