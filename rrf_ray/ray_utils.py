"""Connecting to Ray: join a running cluster when there is one, else start a local Ray."""

from __future__ import annotations

import logging
import os
import sys

from pathlib import Path

import ray
import ray.train

from rrf_ray.config import ResourceSpec


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool | None = None,
             quiet: bool = True) -> None:
    """Idempotent `ray.init`.

    address None: join the cluster named by RAY_ADDRESS or a running local one, else start
    a local Ray for this process. An explicit address must be reachable.
    """
    if ray.is_initialized():
        return
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=True)
    if address is None:
        address = os.environ.get("RAY_ADDRESS")
    if address is None:
        try:
            ray.init(address="auto", **kwargs)
            return
        except ConnectionError:
            pass
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)
        return
    ray.init(address=address, **kwargs)


def say(message: str) -> None:
    """A progress line from inside a Ray Train worker.

    Train V2 patches `print` to log *and* echo when stdout is redirected (it is, in Ray
    workers), so each line would reach the console twice; writing to the stream once avoids it.
    """
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def quiet_ray_data() -> None:
    """No Ray Data progress bars or "Starting execution" lines in this process: the reward
    trainer runs one execution per epoch, and the step lines already say how it goes."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def quiet_train_worker_logs() -> None:
    """Silence Train V2's per-report INFO line ("Reporting training result ..."); keep warnings."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # a Ray without Train V2 internals: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def scaling_config(resources: ResourceSpec) -> ray.train.ScalingConfig:
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=resources.num_workers, use_gpu=resources.use_gpu,
                                   resources_per_worker=per_worker)


def train_run_config(name: str, storage_path, max_failures: int = 0, callbacks=None) -> ray.train.RunConfig:
    """A Ray Train run `name` under `storage_path`: rebuilt with the same two, it resumes."""
    return ray.train.RunConfig(
        name=name, storage_path=storage_uri(storage_path),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        callbacks=callbacks,
    )


def storage_uri(storage) -> str:
    """Ray wants absolute local paths; URIs (s3://, gs://) pass through."""
    storage = str(storage)
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def train_worker_setup(threads: int):
    """Inside a Ray Train worker: (rank, world size, device), quiet logs, torch threads on CPU."""
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    quiet_train_worker_logs()
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    return ctx.get_world_rank(), ctx.get_world_size(), device
