"""Sweep specs: the pydantic base every experiment's spec builds on, and the engine's own blocks.

Every knob of a sweep lives in its experiment's spec model (typed and validated), so a
typo in a YAML file or an override fails at once with the dotted path of the field
instead of deep in a trial (engine.loading reads the YAML; the `experiment:` key picks the
model, engine.registry).
"""

from __future__ import annotations

import sys

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A bad spec file or override. CLIs print it and exit with code 2."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ResourceSpec(Strict):
    """Ray resources per stage."""

    num_workers: int = Field(1, gt=0, description="Ray Train workers per training run")
    local_mode: bool = Field(
        True, description="a 1-worker CPU training run runs in its caller's process (no TrainController or "
        "worker actor, which on a small machine cost as much CPU as the training; see engine.checkpoints.LocalRun); "
        "several workers or a GPU always get real Ray Train workers")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, ge=0.0)
    max_concurrent_trials: int | None = Field(None, gt=0)
    trial_cpus: float = Field(0.1, gt=0.0, description="CPUs held by a trial's own process (its Train runs ask for "
                              "theirs; a local-mode run trains in it and holds cpus_per_worker)")
    pregen_gpus_per_task: float = Field(0.25, ge=0.0, description="GPU fraction per pre-generation task when use_gpu")
    max_failures: int = Field(2, ge=0, description="retries of a failed trial")
    num_cpus: int | None = Field(None, gt=0, description="logical CPUs of a local Ray (default: cores + 1, headroom for Ray Data)")

    @property
    def trains_locally(self) -> bool:
        """Training runs run in their caller's process: one CPU worker, and `local_mode`."""
        return self.local_mode and self.num_workers == 1 and not self.use_gpu

    @property
    def trial_process_cpus(self) -> float:
        """CPUs a trial's own process holds: its local-mode training runs in it."""
        return max(self.trial_cpus, self.cpus_per_worker) if self.trains_locally else self.trial_cpus

class EstimateSpec(Strict):
    """Step rates for --dry-run's GPU-hour estimate; measure yours with benchmarks/diffuser_train.py."""

    diffuser_samples_per_s: float = Field(2000.0, gt=0.0)
    reward_samples_per_s: float = Field(40000.0, gt=0.0)


def exit_on_user_error(exc: Exception) -> None:
    """Print a user error (bad spec, bad argument) and exit with code 2."""
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2)
