"""Experiment tracking: every Tune stage's trials logged to MLflow and/or W&B by Ray Tune's own callbacks.

`python -m rrf_ray.sweep ... --mlflow URI --wandb [PROJECT]` calls `configure` (a missing package
is a ConfigError, exit 2, before any work), and engine.stages.run_stage gives each stage's
RunConfig `callbacks(sweep, stage)`: Ray's MLflowLoggerCallback and WandbLoggerCallback, which log
each trial's config and reported metrics from the driver. The MLflow experiment and the W&B
project default to the sweep's name; the stage is the `rrf_ray.stage` tag of an MLflow run and
the `<sweep>/<stage>` group of a W&B run. Without the flags nothing here runs and neither package
is imported. The callbacks sit inside `StageTracking`, which Tune pickles with a stage (for
--resume) holding only the sweep's and stage's names: a restored stage is tracked as the flags
of the run that resumes it say, not as those of the run that started it (a stage first started
untracked holds no StageTracking: its resumed trials stay untracked).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from urllib.parse import urlsplit

from ray.tune import Callback

from rrf_ray.engine.spec import ConfigError

EXTRA = "pip install 'rrf_ray[tracking]'"  # from a checkout: pip install -e '.[tracking]'
SWEEP_TAG, STAGE_TAG = "rrf_ray.sweep", "rrf_ray.stage"


@dataclass(frozen=True)
class Tracking:
    """Where the driver's Tune stages log (nothing when both are None)."""

    mlflow_uri: str | None = None  # a tracking URI: sqlite:///path.db, file:/path, http(s)://server
    mlflow_experiment: str | None = None  # None: the sweep's name
    wandb_project: str | None = None  # None: no W&B; "": the sweep's name

    @property
    def enabled(self) -> bool:
        return self.mlflow_uri is not None or self.wandb_project is not None


_settings = Tracking()  # this driver's; set by the CLI (configure), read by run_stage (callbacks)


def missing_package_message(flag: str, package: str) -> str:
    how = f"{EXTRA} (or pip install {package})" if package == "mlflow" else f"pip install {package}"  # wandb: no extra
    return f"{flag} needs the {package} package, which is not installed: {how}"


def configure(tracking: Tracking) -> None:
    """Track this process's stages as `tracking` says; ConfigError (exit 2) if a package it needs is missing."""
    global _settings
    for flag, package, on in (("--mlflow", "mlflow", tracking.mlflow_uri is not None),
                              ("--wandb", "wandb", tracking.wandb_project is not None)):
        if on and importlib.util.find_spec(package) is None:  # finds, does not import
            raise ConfigError(missing_package_message(flag, package))
    _settings = tracking


def current() -> Tracking:
    return _settings


def check_mlflow_store() -> None:
    """Open a local MLflow store (a path, file: or sqlite:) now, so that one MLflow refuses (MLflow 3's
    file store without MLFLOW_ALLOW_FILE_STORE=true, a directory it cannot write) is a ConfigError
    before any work rather than a failed first stage. A server is not asked: an unreachable one would
    keep a sweep waiting through MLflow's retries here; Tune reports it when the first stage starts."""
    uri = _settings.mlflow_uri
    if uri is None or urlsplit(uri).scheme not in ("", "file", "sqlite"):
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # MlflowException, OSError, SQLAlchemy's errors...
        raise ConfigError(f"--mlflow {uri}: {e}") from None


def callbacks(sweep: str, stage: str) -> list[Callback]:
    """What run_stage adds to stage `stage`'s RunConfig: [] unless tracking is on."""
    return [StageTracking(sweep, stage)] if _settings.enabled else []


def tune_callbacks(tracking: Tracking, sweep: str, stage: str) -> list[Callback]:
    """Ray Tune's MLflow and W&B logger callbacks for one stage of sweep `sweep`."""
    made = []
    if tracking.mlflow_uri is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        made.append(MLflowLoggerCallback(tracking_uri=tracking.mlflow_uri,
                                         experiment_name=tracking.mlflow_experiment or sweep,
                                         tags={SWEEP_TAG: sweep, STAGE_TAG: stage}))
    if tracking.wandb_project is not None:
        from ray.air.integrations.wandb import WandbLoggerCallback

        made.append(WandbLoggerCallback(project=tracking.wandb_project or sweep, group=f"{sweep}/{stage}",
                                        tags=[sweep, stage]))
    return made


class StageTracking(Callback):
    """Ray's tracking callbacks for one stage, made when Tune sets the stage up (from this process's
    settings, so a restored stage follows the resuming run's flags) and forwarded every Tune event.
    Pickles as its two names: the made callbacks (and their packages) never reach Tune's state files."""

    def __init__(self, sweep: str, stage: str):
        self.sweep, self.stage = sweep, stage
        self._callbacks: list[Callback] = []

    def __getstate__(self):
        return {"sweep": self.sweep, "stage": self.stage}

    def __setstate__(self, state):
        self.__init__(state["sweep"], state["stage"])

    def setup(self, **info):
        self._callbacks = tune_callbacks(_settings, self.sweep, self.stage)
        for callback in self._callbacks:
            callback.setup(**info)

    def _forward(self, hook: str, **info) -> None:
        for callback in self._callbacks:
            getattr(callback, hook)(**info)

    def on_step_begin(self, **info):
        self._forward("on_step_begin", **info)

    def on_step_end(self, **info):
        self._forward("on_step_end", **info)

    def on_trial_start(self, **info):
        self._forward("on_trial_start", **info)

    def on_trial_restore(self, **info):
        self._forward("on_trial_restore", **info)

    def on_trial_save(self, **info):
        self._forward("on_trial_save", **info)

    def on_trial_result(self, **info):
        self._forward("on_trial_result", **info)

    def on_trial_complete(self, **info):
        self._forward("on_trial_complete", **info)

    def on_trial_recover(self, **info):
        self._forward("on_trial_recover", **info)

    def on_trial_error(self, **info):
        self._forward("on_trial_error", **info)

    def on_checkpoint(self, **info):
        self._forward("on_checkpoint", **info)

    def on_experiment_end(self, **info):
        self._forward("on_experiment_end", **info)
