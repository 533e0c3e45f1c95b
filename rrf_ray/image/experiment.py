"""Stable Diffusion vs Safe SD as the engine sees it: `experiment: image` (needs the `image` extra to run)."""

from __future__ import annotations

from rrf_ray.engine.registry import Experiment, register
from rrf_ray.image.report import write_image_report
from rrf_ray.image.spec import ImageSweepSpec
from rrf_ray.image.stages import dry_run, run_image_sweep

EXPERIMENT = register(Experiment("image", ImageSweepSpec, run=run_image_sweep, describe=dry_run,
                                 write_report=write_image_report))
