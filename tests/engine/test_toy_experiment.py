"""The engine is generic: a toy experiment defined here (its own spec model and a two-stage runner),
registered from outside rrf_ray, runs through `python -m rrf_ray.sweep` and resumes without
recomputing its finished trials. No engine file names it."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

TOY_MODULE = textwrap.dedent('''
    """A toy experiment: stage 1 writes one artifact per seed, stage 2 turns each into a trial result."""
    import json
    import os
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
            if os.path.exists(os.environ["TOY_FAIL"]) and seed == 1:
                raise RuntimeError("seed 1 fails while TOY_FAIL exists")
            value = json.loads((paths.artifacts.path("squares", key) / "value.json").read_text())
            return {"value": value + 1}

        tune.report(recorded_trial(paths, f"seed{seed}", {"seed": seed, "key": key}, work))


    def run(spec, storage, resume=False, address=None):
        write_sweep_files(storage, {"spec.json": spec.model_dump_json(indent=1)})
        init_ray(address, num_cpus=2)
        seeds = {"seed": tune.grid_search(spec.seeds)}
        raise_if_any_failed(run_stage("stage1-squares", square, seeds, spec, storage, resume, ["done"]), "square")
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


    register(Experiment("toy", ToySpec, run=run, describe=describe, write_report=write_report))
''')


def toy_sweep(tmp_path, *args, timeout=300):
    env = {**os.environ, "RRF_RAY_EXPERIMENTS": "toy_experiment_module",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "TOY_CALLS": str(tmp_path / "calls.txt"), "TOY_FAIL": str(tmp_path / "FAIL")}
    return subprocess.run([sys.executable, "-m", "rrf_ray.sweep", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_a_toy_experiment_registers_itself_runs_and_resumes(tmp_path):
    (tmp_path / "toy_experiment_module.py").write_text(TOY_MODULE)
    (tmp_path / "toy.yaml").write_text("experiment: toy\nname: toy\nseeds: [0, 1, 2]\nscale: 3.0\n")
    storage, calls = tmp_path / "results", tmp_path / "calls.txt"

    dry = toy_sweep(tmp_path, str(tmp_path / "toy.yaml"), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "toy sweep toy: 3 seeds, 2 stages" in dry.stdout

    bad = toy_sweep(tmp_path, str(tmp_path / "toy.yaml"), "--set", "scael=1", "--dry-run")
    assert bad.returncode == 2 and "scael" in bad.stderr  # the toy's spec model, strict like every other

    (tmp_path / "FAIL").write_text("")
    first = toy_sweep(tmp_path, str(tmp_path / "toy.yaml"), "--storage", str(storage))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = {s: json.loads((storage / "toy" / "trials" / f"seed{s}" / "result.json").read_text())
               for s in (0, 1, 2)}
    assert [results[s]["status"] for s in (0, 1, 2)] == ["ok", "failed", "ok"]
    assert results[2]["metrics"] == {"value": 3.0 * 4 + 1}
    assert sorted(calls.read_text().split("\n")[:-1]) == sorted(
        ["square 0", "square 1", "square 2", "trial 0", "trial 1", "trial 2"])

    (tmp_path / "FAIL").unlink()
    calls.write_text("")
    again = toy_sweep(tmp_path, str(tmp_path / "toy.yaml"), "--storage", str(storage), "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert calls.read_text().split("\n")[:-1] == ["trial 1"]  # only the failed trial ran again
    report = (storage / "toy" / "report.md").read_text()
    assert "seed 1: ok {'value': 4.0}" in report and "seed 0: ok {'value': 1.0}" in report

    rebuilt = subprocess.run([sys.executable, "-m", "rrf_ray.report", str(storage / "toy")], capture_output=True,
                             text=True, timeout=120, env={**os.environ, "RRF_RAY_EXPERIMENTS": "toy_experiment_module",
                                                           "PYTHONPATH": str(tmp_path)})
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
