"""The experiment registry: what the YAML's `experiment:` key can name.

The engine names no experiment. Each experiment package declares one `Experiment` (its spec
model, its runner, its dry-run text, its report writer) and registers it when its
`experiment` module is imported. The modules to import are found, once, through the
`rrf_ray.experiments` entry points of installed packages (rrf_ray's own three live in its
pyproject.toml, so a user's package can add a fourth the same way) and the
`RRF_RAY_EXPERIMENTS` environment variable (comma-separated module names: an experiment
that is not installed, such as a test's toy).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from rrf_ray.engine.spec import ConfigError

ENTRY_POINT_GROUP = "rrf_ray.experiments"
MODULES_ENV = "RRF_RAY_EXPERIMENTS"


@dataclass(frozen=True)
class Experiment:
    """One experiment, as the engine sees it.

    run(spec, storage, resume, address) -> the report's path: every stage, on Ray;
    describe(spec) -> what `--dry-run` prints;
    write_report(sweep_dir) -> the report's path, rebuilt from a sweep directory alone;
    user_errors: exceptions of `run` that are the user's to fix (a missing dataset):
    the CLI prints them and exits 2 instead of a traceback;
    growable: dotted spec fields that `--resume` may grow (a list by appending, a mapping by
    new keys), e.g. ("seeds",): fields whose new values only add trials and leave every
    finished artifact valid (engine.spec.compare_specs). The engine cannot know which those are.
    """

    name: str
    spec_model: type[BaseModel]
    run: Callable
    describe: Callable
    write_report: Callable[[Path], Path] | None = None
    user_errors: tuple[type[Exception], ...] = field(default=())
    growable: tuple[str, ...] = field(default=())


_experiments: dict[str, Experiment] = {}
_default: list[str] = []
_loaded: list[bool] = []


def register(experiment: Experiment, default: bool = False) -> Experiment:
    """Make `experiment` nameable by `experiment:`; `default` picks it for YAMLs that name none."""
    _experiments[experiment.name] = experiment
    if default and experiment.name not in _default:
        _default.insert(0, experiment.name)
    return experiment


def load_experiments() -> None:
    """Import every experiment module named by entry points and RRF_RAY_EXPERIMENTS (once)."""
    if _loaded:
        return
    _loaded.append(True)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    for module in filter(None, (m.strip() for m in os.environ.get(MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"{MODULES_ENV}: cannot import experiment module {module!r}: {e}") from None


def get_experiment(name: object) -> Experiment:
    load_experiments()
    if name not in _experiments:
        known = ", ".join(sorted(_experiments)) or "none (is rrf_ray installed? pip install -e .)"
        raise ConfigError(f"experiment: unknown experiment {name!r}; known: {known}")
    return _experiments[name]


def default_experiment() -> str:
    """The experiment a YAML without an `experiment:` key runs."""
    load_experiments()
    if not _default:
        raise ConfigError("the YAML names no experiment and none is registered as the default")
    return _default[0]


def known_experiments() -> list[str]:
    load_experiments()
    return sorted(_experiments)
