"""Sweep specs: the pydantic base every experiment's spec builds on, and the engine's own blocks.

Every knob of a sweep lives in its experiment's spec model (typed and validated), so a
typo in a YAML file or an override fails at once with the dotted path of the field
instead of deep in a trial (engine.loading reads the YAML; the `experiment:` key picks the
model, engine.registry).
"""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass, field

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

RATE_DEFAULTS = {  # placeholders, not measurements: --dry-run says so beside every one it uses
    "diffuser_samples_per_s": 2000.0,
    "reward_samples_per_s": 40000.0,
    "plans_per_s": 50.0,
    "irl_steps_per_s": 5.0,
}
RATE_UNITS = {"diffuser_samples_per_s": "diffuser training samples/s", "reward_samples_per_s":
              "reward alignment samples/s", "plans_per_s": "guided plans/s", "irl_steps_per_s": "Algorithm 4 steps/s"}


class EstimateSpec(Strict):
    """Step rates behind --dry-run's device-hour estimate, and where they came from.

    `python benchmarks/model_rates.py --device cuda --profile NAME` measures them for a profile's
    model sizes and prints this block (with `device` and `date`); a rate left unset is a default
    placeholder, and --dry-run marks it as one.
    """

    device: str | None = Field(None, description="where the rates were measured (e.g. 'NVIDIA H200')")
    date: datetime.date | None = Field(None, description="when they were measured (YYYY-MM-DD)")
    precision: str | None = Field(None, description="the numeric precision they were measured at")
    diffuser_samples_per_s: float | None = Field(None, gt=0.0, description="diffuser training, per training run")
    reward_samples_per_s: float | None = Field(None, gt=0.0, description="reward alignment (the double backward)")
    plans_per_s: float | None = Field(None, gt=0.0, description="guided sampling of whole plans, per rollout trial")
    irl_steps_per_s: float | None = Field(None, gt=0.0, description="Algorithm 4 steps at the profile's batch")

    def rate(self, name: str) -> float:
        value = getattr(self, name)
        return RATE_DEFAULTS[name] if value is None else value

    def provenance(self, name: str) -> str:
        """'measured on NVIDIA H200, 2026-12-03' / 'set by hand' / 'DEFAULT placeholder ...'."""
        if getattr(self, name) is None:
            return "DEFAULT placeholder, not a measurement: run benchmarks/model_rates.py"
        if self.device:
            return f"measured on {self.device}" + (f", {self.date.isoformat()}" if self.date else "") + \
                (f", {self.precision}" if self.precision else "")
        return "set by hand"

    def hours(self, work: dict[str, float]) -> tuple[float, list[str]]:
        """Device-hours for `work` (units of each rate: samples, plans, steps) and one line per rate used."""
        hours, lines = 0.0, []
        for name, amount in work.items():
            hours += amount / self.rate(name) / 3600
            rate = self.rate(name)
            shown = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
            lines.append(f"  {RATE_UNITS[name]}: {shown} ({self.provenance(name)}) "
                         f"x {amount:,.0f} = {amount / self.rate(name) / 3600:,.2f} h")
        return hours, lines


@dataclass
class SpecChange:
    """How a spec differs from the one a sweep was started with (engine.spec.compare_specs)."""

    grown: list[str] = field(default_factory=list)  # "seeds + [1]": growable fields that only grew
    differing: list[str] = field(default_factory=list)  # dotted fields that changed otherwise


_MISSING = object()


def compare_specs(stored: dict, new: dict, growable: tuple[str, ...] = ()) -> SpecChange:
    """Compare two specs (as JSON dicts), naming every differing field by its dotted path.

    A field in `growable` may grow: a list by appending elements, a mapping by new keys (its
    old keys keeping their values). Artifacts are content-addressed, so growing such a field
    adds trials and leaves every finished one valid; any other change would not.
    """
    change = SpecChange()
    _compare(stored, new, [], set(growable), change)
    return change


def _compare(old, new, path: list[str], growable: set[str], change: SpecChange) -> None:
    if old == new:
        return
    where = ".".join(path) or "(top level)"
    if where in growable:
        if isinstance(old, list) and isinstance(new, list) and new[: len(old)] == old:
            change.grown.append(f"{where} + {json.dumps(new[len(old):])}")
            return
        if isinstance(old, dict) and isinstance(new, dict) and all(k in new and new[k] == v for k, v in old.items()):
            change.grown.append(f"{where} + {', '.join(str(k) for k in new if k not in old)}")
            return
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old and where not in growable]
        for k in keys:
            _compare(old.get(k, _MISSING), new.get(k, _MISSING), path + [str(k)], growable, change)
        return
    change.differing.append(where)


def exit_on_user_error(exc: Exception) -> None:
    """Print a user error (bad spec, bad argument) and exit with code 2."""
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2)
