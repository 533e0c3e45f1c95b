"""The Maze2D relative-reward experiment as the engine sees it: `experiment: maze2d` (the default)."""

from __future__ import annotations

from rrf_ray.data.minari_io import DatasetError
from rrf_ray.engine.registry import Experiment, register
from rrf_ray.maze2d.report import write_report
from rrf_ray.maze2d.spec import Maze2DSpec
from rrf_ray.maze2d.stages import dry_run, run_sweep

EXPERIMENT = register(Experiment("maze2d", Maze2DSpec, run=run_sweep, describe=dry_run, write_report=write_report,
                                 user_errors=(DatasetError,), growable=("mazes", "goals", "seeds")), default=True)
