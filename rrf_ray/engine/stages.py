"""Running an experiment's stages on Ray Tune, and recording what each trial produced.

A stage is a Tune grid (or an Optuna search) of one trainable over a parameter space,
named after the stage so that `--resume` restores it (Tuner.restore, resume_errored); a
grid that changed since (a grown sweep) runs afresh instead, since a restored Tuner keeps
its old grid, and its finished trials are found by their recorded results. A
trial that produces a result writes it to `trials/<id>/result.json` (status, metrics, or
the error with its traceback), keyed by the content hash of what made it, so a later run
with the same key reports the stored metrics instead of recomputing them.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rrf_ray.engine import stopping
from rrf_ray.engine.artifacts import ArtifactStore
from rrf_ray.engine.atomic import write_atomic
from rrf_ray.engine.storage import SweepStorage

SPACE_FILE = "rrf_ray-space.json"  # in a stage's directory: the grid it was started with


@dataclass(frozen=True)
class SweepPaths:
    """A sweep's files: local paths (the storage directory, or this node's mirror of a URI)."""

    storage: SweepStorage

    @property
    def root(self) -> Path:
        return self.storage.local

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.storage)

    @property
    def train(self) -> str:
        """Ray Train's storage path (a URI for remote storage)."""
        return self.storage.uri_of("train")

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / "trials" / trial_id

    def push_trial(self, trial_id: str) -> None:
        self.storage.push(f"trials/{trial_id}")


def tune_report_callbacks():
    """Callbacks that forward a Ray Train run's reports to the Tune trial it runs in."""
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def copy_checkpoint(result, directory: Path) -> None:
    """A training run's final checkpoint copied into `directory` (a builder for ArtifactStore.ensure)."""
    import shutil

    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, directory)


def read_trial_result(storage: SweepStorage, tid: str) -> dict | None:
    try:
        return json.loads(storage.read_text(f"trials/{tid}/result.json") or "null")
    except json.JSONDecodeError:
        return None


def record_trial(paths: SweepPaths, tid: str, record: dict, work: Callable[[], dict]) -> dict:
    """metrics = work(), written (or its failure, with traceback) to the trial's result.json and pushed."""
    out = paths.trial_dir(tid)
    try:
        metrics = work()
    except Exception as e:
        write_atomic(out / "result.json", json.dumps({**record, "status": "failed", "metrics": None,
                                                      "error": f"{type(e).__name__}: {e}",
                                                      "traceback": traceback.format_exc()}, indent=1))
        paths.push_trial(tid)
        raise
    write_atomic(out / "result.json", json.dumps({**record, "status": "ok", "error": None, "metrics": metrics},
                                                 indent=1))
    paths.push_trial(tid)
    return metrics


def recorded_trial(paths: SweepPaths, tid: str, record: dict, work: Callable[[], dict]) -> dict:
    """The trial's metrics: those of its result.json when it finished before with the same
    `record["key"]` (nothing recomputed), else `record_trial(...)`'s."""
    previous = read_trial_result(paths.storage, tid)
    if previous and previous.get("status") == "ok" and previous.get("key") == record["key"]:
        return previous["metrics"]
    return record_trial(paths, tid, record, work)


class PhaseTimer:
    """Wall-clock seconds of a trial's phases (reported as `<phase>_s`), to see where time goes."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._phase, self._t0 = None, 0.0

    def start(self, phase: str) -> None:
        self.stop()
        self._phase, self._t0 = phase, time.perf_counter()

    def stop(self) -> dict[str, float]:
        if self._phase is not None:
            self.seconds[f"{self._phase}_s"] = round(time.perf_counter() - self._t0, 2)
            self._phase = None
        return dict(self.seconds)


@dataclass(frozen=True)
class Search:
    """A Tune search instead of a grid: `algorithm` (e.g. ray.tune.search.optuna.OptunaSearch)
    samples `num_samples` points of the stage's parameter space, optimising `metric` (`mode`
    "max" or "min") as the trials report it."""

    algorithm: object
    metric: str
    mode: str
    num_samples: int


def run_stage(name: str, trainable, param_space: dict, spec, storage: SweepStorage, resume: bool,
              metric_columns: list[str], trial_resources: dict | None = None, search: Search | None = None):
    """A Tune grid (or `search`) `name` of `trainable(config, spec=, storage=)`; restored when resuming.

    `spec` has a `resources` block (engine.spec.ResourceSpec). trial_resources: what each
    trial's own process holds (default resources.trial_process_cpus CPUs: its Train runs ask
    for theirs, or train in it in local mode); trials that compute in their own process ask
    for more. With experiment tracking on (engine.tracking: the sweep's --mlflow/--wandb), the
    stage's trials log their config and metrics to it.
    """
    from ray import tune

    from rrf_ray.engine import tracking

    fn = tune.with_resources(tune.with_parameters(trainable, spec=spec, storage=storage),
                             trial_resources or {"cpu": spec.resources.trial_process_cpus})
    fs = storage.fs  # None for a directory: Tune uses the local file system
    root = storage.remote if storage.is_remote else str(storage.local)
    path = f"{root}/{name}"
    space = grid_fingerprint(param_space) if search is None else None
    if resume and tune.Tuner.can_restore(path, storage_filesystem=fs) and not grid_changed(storage, name, space):
        tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True, param_space=param_space,
                                   storage_filesystem=fs)
    else:
        searching = {} if search is None else dict(search_alg=search.algorithm, metric=search.metric,
                                                   mode=search.mode, num_samples=search.num_samples)
        tuner = tune.Tuner(
            fn, param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.max_concurrent_trials, **searching),
            run_config=tune.RunConfig(
                name=name, storage_path=root, storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                progress_reporter=tune.CLIReporter(metric_columns=metric_columns, max_report_frequency=30),
                callbacks=tracking.callbacks(storage.name, name) or None,
            ),
        )
        if space is not None:
            write_atomic(storage.local / name / SPACE_FILE, space)
            storage.push(f"{name}/{SPACE_FILE}")
    with stopping.tune_run():  # SIGINT/SIGTERM: Tune saves its state, then the sweep stops
        return tuner.fit()


def grid_fingerprint(param_space: dict) -> str | None:
    """The grid as JSON (None if it holds values JSON cannot write: such a stage always restores)."""
    try:
        return json.dumps(param_space, sort_keys=True, indent=1)
    except (TypeError, ValueError):
        return None


def grid_changed(storage: SweepStorage, name: str, space: str | None) -> bool:
    """Whether stage `name` was started with another grid than `space` (False when unknown)."""
    if space is None:
        return False
    before = storage.read_text(f"{name}/{SPACE_FILE}")
    return before is not None and before != space


def raise_if_any_failed(grid, what: str) -> None:
    """A stage whose later stages need every run: raise if any of them failed."""
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} {what} run(s) failed; first error: {errors[0]}")


def write_sweep_files(storage: SweepStorage, files: dict[str, str]) -> None:
    """Write (atomically) and push the sweep's own files (spec.json, trials.json) before any stage."""
    storage.local.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_atomic(storage.local / name, text)
        storage.push(name)
