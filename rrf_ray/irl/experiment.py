"""Inverse RL with one diffuser, head to head with the relative reward: `experiment: irl`."""

from __future__ import annotations

from rrf_ray.data.minari_io import DatasetError
from rrf_ray.engine.registry import Experiment, register
from rrf_ray.irl.adversarial import MissingImitation
from rrf_ray.irl.report import write_report
from rrf_ray.irl.spec import IRLExperimentSpec
from rrf_ray.irl.stages import dry_run, run_sweep

EXPERIMENT = register(Experiment("irl", IRLExperimentSpec, run=run_sweep, describe=dry_run,
                                 write_report=write_report, user_errors=(DatasetError, MissingImitation),
                                 growable=("seeds", "methods", "nets")))
