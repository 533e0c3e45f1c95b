"""Locomotion steering as the engine sees it: `experiment: locomotion`."""

from __future__ import annotations

from rrf_ray.data.minari_io import DatasetError
from rrf_ray.engine.registry import Experiment, register
from rrf_ray.locomotion.report import write_locomotion_report
from rrf_ray.locomotion.spec import LocomotionSweepSpec
from rrf_ray.locomotion.stages import dry_run, run_locomotion_sweep

EXPERIMENT = register(Experiment("locomotion", LocomotionSweepSpec, run=run_locomotion_sweep, describe=dry_run,
                                 write_report=write_locomotion_report, user_errors=(DatasetError,),
                                 growable=("seeds", "transfer_seeds")))
