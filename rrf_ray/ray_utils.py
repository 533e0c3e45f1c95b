"""Connecting to Ray: join a running cluster when there is one, else start a local Ray."""

from __future__ import annotations

import logging
import os
import sys

from pathlib import Path

import ray
import ray.train

from rrf_ray.checkpoints import LocalRun
from rrf_ray.config import ResourceSpec
from rrf_ray.storage import join_uri


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


def fit_training_run(loop, job, resources: ResourceSpec, storage_path, name: str, max_failures: int = 0,
                     callbacks=None, datasets: dict | None = None, dataset_config=None) -> ray.train.Result:
    """Run `loop({"job": job})` as the training run `name` under `storage_path`; returns its Result.

    On real Ray Train workers (several, or a GPU) Ray Train stores checkpoints and `callbacks`
    forward reports to Tune. A 1-worker CPU run (`resources.trains_locally`) calls the loop in
    this process instead, with `job.local_run` as its run (see LocalRun): no TrainController
    or worker actor, checkpoints under the same storage path and name (so a rebuilt run
    resumes either way), reports forwarded to Tune when `callbacks` were asked for.
    `job` is a dataclass with a `local_run` field.
    """
    import dataclasses

    import torch

    if not resources.trains_locally:
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(loop, train_loop_config={"job": job}, scaling_config=scaling_config(resources),
                               run_config=train_run_config(name, storage_path, max_failures, callbacks),
                               datasets=datasets, dataset_config=dataset_config)
        return trainer.fit()
    run = LocalRun(join_uri(storage_uri(storage_path), name), to_tune=callbacks is not None, datasets=datasets)
    threads = torch.get_num_threads()  # the loop sets its own in this process; give the caller's back
    try:
        loop({"job": dataclasses.replace(job, local_run=run)})
    finally:
        torch.set_num_threads(threads)
    return ray.train.Result(metrics=run.last_metrics, checkpoint=run.checkpoint(), path=run.uri, error=None)


def storage_uri(storage) -> str:
    """Ray wants absolute local paths; URIs (s3://, gs://) pass through."""
    storage = str(storage)
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def train_worker_setup(threads: int, local_run: LocalRun | None = None):
    """Inside a Ray Train worker, or a local run: (rank, world size, device), quiet logs, torch threads on CPU."""
    import ray.train.torch
    import torch

    if local_run is not None:
        torch.set_num_threads(max(1, threads))
        return 0, 1, torch.device("cpu")
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    quiet_train_worker_logs()
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    return ctx.get_world_rank(), ctx.get_world_size(), device


def prepare_model(model, local_run: LocalRun | None = None):
    """`ray.train.torch.prepare_model` (device, DDP) on workers; a local run's model stays as it is, on the CPU."""
    if local_run is not None:
        return model
    import ray.train.torch

    return ray.train.torch.prepare_model(model)


def dataset_shard(name: str, local_run: LocalRun | None = None):
    """This worker's shard of the run's dataset `name` (a local run iterates the whole dataset)."""
    return local_run.datasets[name] if local_run is not None else ray.train.get_dataset_shard(name)
