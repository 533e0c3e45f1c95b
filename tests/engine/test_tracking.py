"""Experiment tracking (engine.tracking): a real Tune stage through run_stage, tracked by Ray's
MLflowLoggerCallback into a real MLflow store, read back with MLflow's own client; and the flags
of `python -m rrf_ray.sweep` that turn it on (or, with a package missing, refuse before any work)."""

import pickle
import subprocess
import sys

import pytest
import ray.cloudpickle
from pydantic import Field
from ray import tune

from rrf_ray.engine import tracking
from rrf_ray.engine.cli import build_parser, configure_tracking, resume_command
from rrf_ray.engine.spec import ConfigError, ResourceSpec, Strict
from rrf_ray.engine.stages import run_stage
from rrf_ray.engine.storage import SweepStorage

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


class TinySpec(Strict):
    resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(max_failures=0, trial_cpus=0.5))


def reported(x: float) -> list[float]:
    """What trial `x` reports, one value per Tune iteration (steps 1, 2, 3)."""
    return [10.0 * x + step for step in range(3)]


def climb(config, spec, storage):
    for value in reported(config["x"]):
        tune.report({"value": value, "note": "not a number"})


@pytest.fixture
def tracking_off_after():
    yield
    tracking.configure(tracking.Tracking())


def test_a_tracked_stage_logs_one_mlflow_run_per_trial(ray_local, tmp_path, monkeypatch, tracking_off_after):
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient  # pip install -e '.[tracking]'

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store without it
    uri = (tmp_path / "mlruns").as_uri()  # file:///...
    tracking.configure(tracking.Tracking(mlflow_uri=uri))
    tracking.check_mlflow_store()
    storage = SweepStorage(str(tmp_path / "results"), "tiny-tracked")
    grid = run_stage("grid", climb, {"x": tune.grid_search([0.0, 1.0, 2.0])}, TinySpec(), storage, False, ["value"])
    assert sorted(r.metrics["value"] for r in grid) == [2.0, 12.0, 22.0]

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny-tracked")  # named after the sweep
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # one per trial
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags[tracking.STAGE_TAG] == "grid" and run.data.tags[tracking.SWEEP_TAG] == "tiny-tracked"
        x = float(run.data.params["x"])  # the trial's config
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "value"))
        assert history == list(zip((1, 2, 3), reported(x)))
        assert "note" not in run.data.metrics  # MLflow metrics are numbers
    assert sorted(float(r.data.params["x"]) for r in runs) == [0.0, 1.0, 2.0]


def test_untracked_stages_get_no_callbacks_and_a_restored_stage_follows_the_resuming_run(tracking_off_after):
    assert tracking.callbacks("sweep", "stage") == []
    pytest.importorskip("mlflow")
    tracking.configure(tracking.Tracking(mlflow_uri="sqlite:///unused.db"))
    [callback] = tracking.callbacks("sweep", "stage")
    restored = pickle.loads(pickle.dumps(callback))  # as Tune keeps it in the stage's tuner.pkl
    assert (restored.sweep, restored.stage) == ("sweep", "stage")
    tracking.configure(tracking.Tracking())  # resumed without --mlflow
    restored.setup()
    assert restored._callbacks == []


def test_flags_configure_tracking_and_survive_into_the_resume_command(tmp_path, tracking_off_after):
    parser = build_parser()
    with pytest.raises(ConfigError, match="--mlflow-experiment needs --mlflow"):
        configure_tracking(parser.parse_args(["maze2d-tiny", "--mlflow-experiment", "e"]))
    args = parser.parse_args(["maze2d-tiny", "--mlflow", "sqlite:///m.db", "--mlflow-experiment", "e", "--wandb"])
    assert (args.mlflow, args.mlflow_experiment, args.wandb) == ("sqlite:///m.db", "e", "")
    again = parser.parse_args(resume_command(args, SweepStorage(str(tmp_path), "maze2d-tiny")).split()[3:])
    assert (again.mlflow, again.mlflow_experiment, again.wandb) == ("sqlite:///m.db", "e", "")
    assert parser.parse_args(["maze2d-tiny", "--wandb", "proj"]).wandb == "proj"

    pytest.importorskip("mlflow")
    configure_tracking(parser.parse_args(["maze2d-tiny", "--mlflow", "sqlite:///m.db"]))
    assert tracking.current() == tracking.Tracking(mlflow_uri="sqlite:///m.db")
    configure_tracking(parser.parse_args(["maze2d-tiny"]))  # a later run without the flags
    assert not tracking.current().enabled


@pytest.mark.parametrize("flags, package", [(["--mlflow", "sqlite:///m.db"], "mlflow"), (["--wandb"], "wandb")])
def test_a_missing_package_is_a_config_error_naming_the_extra(flags, package, monkeypatch, tracking_off_after):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: find_spec answers None
    with pytest.raises(ConfigError) as e:
        configure_tracking(build_parser().parse_args(["maze2d-tiny", *flags]))
    assert f"pip install {package}" in str(e.value)
    assert ("pip install 'rrf_ray[tracking]'" in str(e.value)) == (package == "mlflow")  # W&B: not in the extra
    assert str(e.value).startswith(flags[0])
    assert not tracking.current().enabled


def test_a_local_store_mlflow_refuses_is_a_config_error(tmp_path, tracking_off_after):
    pytest.importorskip("mlflow")
    (tmp_path / "a-file").write_text("")
    tracking.configure(tracking.Tracking(mlflow_uri=f"sqlite:///{tmp_path}/a-file/m.db"))
    with pytest.raises(ConfigError, match="^--mlflow sqlite:///"):
        tracking.check_mlflow_store()


def test_without_the_flags_neither_ray_nor_a_tracking_package_is_imported():
    code = ("import sys; from rrf_ray.engine.cli import build_parser, configure_tracking; "
            "configure_tracking(build_parser().parse_args(['maze2d-tiny'])); "
            "print(sorted(m for m in ('ray', 'mlflow', 'wandb', 'rrf_ray.engine.tracking') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
