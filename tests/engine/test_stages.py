"""The engine's Tune stage runner: a grid, or a search that samples the space (Optuna in locomotion)."""

import sys

import ray.cloudpickle
from pydantic import Field
from ray import tune
from ray.tune.search import BasicVariantGenerator

from rrf_ray.engine.spec import ResourceSpec, Strict
from rrf_ray.engine.stages import Search, run_stage
from rrf_ray.engine.storage import SweepStorage

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


class TinySpec(Strict):
    resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(max_failures=0, trial_cpus=0.5))


def parabola(config, spec, storage):
    tune.report({"value": -(config["x"] - 1.0) ** 2})


def test_a_stage_runs_a_grid_or_a_search_of_its_space(ray_local, tmp_path):
    spec, storage = TinySpec(), SweepStorage(str(tmp_path), "tiny")
    grid = run_stage("grid", parabola, {"x": tune.grid_search([0.0, 1.0, 2.0])}, spec, storage, False, ["value"])
    assert sorted(r.metrics["value"] for r in grid) == [-1.0, -1.0, 0.0]

    search = Search(BasicVariantGenerator(random_state=0), metric="value", mode="max", num_samples=4)
    sampled = run_stage("search", parabola, {"x": tune.uniform(-2.0, 2.0)}, spec, storage, False, ["value"],
                        search=search)
    xs = [r.config["x"] for r in sampled]
    assert len(xs) == 4 and len(set(xs)) == 4 and all(-2.0 <= x <= 2.0 for x in xs)
    assert sampled.get_best_result().metrics["value"] == max(r.metrics["value"] for r in sampled)
    assert (tmp_path / "tiny" / "search").is_dir()  # the stage's state, for --resume
