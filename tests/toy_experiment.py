"""A toy experiment registered from outside rrf_ray (RRF_RAY_EXPERIMENTS), and helpers that run
its sweep as a user does: `python -m rrf_ray.sweep` in a subprocess, on a private local Ray.

Stage 1 writes one artifact per seed, stage 2 turns each into a trial result. Every
computation appends a line to the file TOY_CALLS names, so a test sees what ran (and what a
resume did not run again); a trial whose seed is listed in the file TOY_HOLD names waits
while it is listed, so a test can act while the sweep is in its trials stage ("prepare"
listed there holds a Ray task before the first stage: Ray work outside Tune).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

TOY_MODULE = textwrap.dedent('''
    """A toy experiment: stage 1 writes one artifact per seed, stage 2 turns each into a trial result."""
    import json
    import os
    import time
    from typing import Literal

    from pydantic import Field
    from ray import tune

    from rrf_ray.engine.artifacts import artifact_key
    from rrf_ray.engine.atomic import write_atomic
    from rrf_ray.engine.ray_runtime import init_ray
    from rrf_ray.engine.registry import Experiment, register
    from rrf_ray.engine.spec import ResourceSpec, Strict
    from rrf_ray.engine.stages import (SweepPaths, raise_if_any_failed, read_trial_result, recorded_trial,
                                       run_stage, write_sweep_files)


    class ToySpec(Strict):
        name: str = "toy"
        experiment: Literal["toy"] = "toy"
        seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
        scale: float = 2.0
        resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(max_failures=0))


    def log_call(what):
        """Every computation leaves a line in the file named by TOY_CALLS: what ran, and how often."""
        with open(os.environ["TOY_CALLS"], "a") as f:
            f.write(what + "\\n")


    def held(seed):
        path = os.environ.get("TOY_HOLD", "")
        return bool(path) and os.path.exists(path) and str(seed) in open(path).read().split()


    def prepare():
        while held("prepare"):
            time.sleep(0.2)


    def square(config, spec, storage):
        store, seed = SweepPaths(storage).artifacts, config["seed"]
        key = artifact_key("square", spec.scale, seed)
        if not store.is_done("squares", key):
            log_call(f"square {seed}")
            write_atomic(store.path("squares", key) / "value.json", json.dumps(spec.scale * seed ** 2))
            store.mark_done("squares", key)
        tune.report({"done": 1})


    def trial(config, spec, storage):
        paths, seed = SweepPaths(storage), config["seed"]
        key = artifact_key("square", spec.scale, seed)

        def work():
            log_call(f"trial {seed}")
            while held(seed):
                time.sleep(0.2)
            if os.path.exists(os.environ["TOY_FAIL"]) and seed == 1:
                raise RuntimeError("seed 1 fails while TOY_FAIL exists")
            value = json.loads((paths.artifacts.path("squares", key) / "value.json").read_text())
            print(f"[toy-seed{seed}] value {value + 1}", flush=True)
            return {"value": value + 1}

        tune.report(recorded_trial(paths, f"seed{seed}", {"seed": seed, "key": key}, work))


    def run(spec, storage, resume=False, address=None):
        import ray

        write_sweep_files(storage, {"spec.json": spec.model_dump_json(indent=1)})
        init_ray(address, num_cpus=2, dashboard=False)
        print("[toy] preparing", flush=True)
        ray.get(ray.remote(num_cpus=0.1)(prepare).remote())  # Ray work outside any Tune stage
        seeds = {"seed": tune.grid_search(spec.seeds)}
        print("[toy] stage 1/2: squares", flush=True)
        raise_if_any_failed(run_stage("stage1-squares", square, seeds, spec, storage, resume, ["done"]), "square")
        print("[toy] stage 2/2: trials", flush=True)
        run_stage("stage2-trials", trial, seeds, spec, storage, resume, ["value"])
        return write_report(storage.local)


    def write_report(sweep_dir):
        from rrf_ray.engine.storage import SweepStorage

        storage = SweepStorage(str(sweep_dir.parent), sweep_dir.name)
        rows = [read_trial_result(storage, f"seed{s}") for s in ToySpec.model_validate_json(
            (sweep_dir / "spec.json").read_text()).seeds]
        lines = [f"seed {r['seed']}: {r['status']} {r['metrics']}" for r in rows if r]
        return write_atomic(sweep_dir / "report.md", "\\n".join(lines) + "\\n")


    def describe(spec):
        return f"toy sweep {spec.name}: {len(spec.seeds)} seeds, 2 stages"


    register(Experiment("toy", ToySpec, run=run, describe=describe, write_report=write_report, growable=("seeds",)))
''')


class Toy:
    """A toy sweep's files in `tmp_path`: the module, `toy.yaml`, the storage and the calls log."""

    def __init__(self, tmp_path: Path, seeds=(0, 1, 2), scale: float = 3.0):
        self.dir = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "toy_experiment_module.py").write_text(TOY_MODULE)
        self.yaml = tmp_path / "toy.yaml"
        self.yaml.write_text(f"experiment: toy\nname: toy\nseeds: {list(seeds)}\nscale: {scale}\n")
        self.storage, self.calls, self.hold = tmp_path / "results", tmp_path / "calls.txt", tmp_path / "HOLD"
        self.root = self.storage / "toy"

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        return {**env, "RRF_RAY_EXPERIMENTS": "toy_experiment_module",
                "PYTHONPATH": os.pathsep.join([str(self.dir), os.environ.get("PYTHONPATH", "")]),
                "TOY_CALLS": str(self.calls), "TOY_FAIL": str(self.dir / "FAIL"), "TOY_HOLD": str(self.hold)}

    def args(self, *extra) -> list[str]:
        return [sys.executable, "-m", "rrf_ray.sweep", str(self.yaml), "--storage", str(self.storage), *extra]

    def run(self, *extra, timeout=300, args=None) -> subprocess.CompletedProcess:
        return subprocess.run(args or self.args(*extra), capture_output=True, text=True, timeout=timeout,
                              env=self.env)

    def start(self, *extra, log: Path | None = None) -> subprocess.Popen:
        """The sweep as a background driver, its console in `log`, in its own session (a test kills its group)."""
        log = log or self.dir / "driver.log"
        return subprocess.Popen(self.args(*extra), stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
                                env=self.env, start_new_session=True)

    def result(self, seed: int) -> dict | None:
        path = self.root / "trials" / f"seed{seed}" / "result.json"
        return json.loads(path.read_text()) if path.exists() else None

    def result_bytes(self, seed: int) -> bytes:
        return (self.root / "trials" / f"seed{seed}" / "result.json").read_bytes()

    def call_lines(self) -> list[str]:
        return self.calls.read_text().split("\n")[:-1] if self.calls.exists() else []


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL a driver started by `Toy.start` and everything of its session: its private Ray, and
    the Ray workers running its trials (each in a process group of its own), which would otherwise
    outlive a killed driver for half a minute and finish a held trial once its hold is lifted."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == proc.pid:  # the session id: the driver's pid (start_new_session)
            members.append(int(stat.parent.name))
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def wait_for(condition, proc: subprocess.Popen | None = None, log: Path | None = None, timeout: float = 240,
             what: str = "the condition"):
    """Poll until `condition()` holds; fail if `proc` ends first or `timeout` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"the driver ended (rc {proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
