"""Ray Train runs: on real workers (several, or a GPU), or in the caller's process (one CPU worker).

`fit_training_run` is the one way every trainer (diffusers, rewards, discriminators) starts
a run; inside the loop, `train_worker_setup`, `prepare_model` and `dataset_shard` give the
loop what Ray Train would, whichever way it runs, and `TrainingLoop` runs the steps: the
trainers differ only in their step, their metrics and their validation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch

from rrf_ray.engine.checkpoints import LocalRun, report_metrics, report_with_checkpoint
from rrf_ray.engine.precision import configure_precision
from rrf_ray.engine.ray_runtime import quiet_train_worker_logs, say
from rrf_ray.engine.spec import ResourceSpec
from rrf_ray.engine.storage import join_uri


def scaling_config(resources: ResourceSpec) -> ray.train.ScalingConfig:
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=resources.num_workers, use_gpu=resources.use_gpu,
                                   resources_per_worker=per_worker)


def data_config(datasets_to_split: list[str]) -> ray.train.DataConfig:
    """Ray Train's DataConfig with Ray Data's current execution options given explicitly.

    DataConfig's default copies them into a new ExecutionOptions including the deprecated
    `exclude_resources`, whose setter warns (RayDeprecationWarning) in every training run.
    """
    from ray.data import DataContext, ExecutionOptions

    current = DataContext.get_current().execution_options
    options = ExecutionOptions(resource_limits=current.resource_limits, preserve_order=current.preserve_order,
                               verbose_progress=current.verbose_progress, label_selector=current.label_selector)
    return ray.train.DataConfig(datasets_to_split=datasets_to_split, execution_options=options)


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

    if local_run is not None:
        torch.set_num_threads(max(1, threads))
        return 0, 1, torch.device("cpu")
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    configure_precision(device)
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


def average_gradients(module: torch.nn.Module, world: int) -> None:
    """Mean of the parameters' gradients over the run's workers, by hand.

    For losses that differentiate through a gradient of the model (create_graph): DDP's hooks do
    not support that double backward, so those trainers keep the model unwrapped and average here.
    """
    if world <= 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message says at which step."""


@dataclass
class TrainingLoop:
    """The steps of a Ray Train loop, from its restored step to `total_steps`, shared by every trainer.

    Every `log_every` steps, every `checkpoint_every` steps and at the last one, each rank
    reports the means since the last report (loss and the step's extra metrics), throughput
    and the step it resumed from; at checkpoints, with `validate()`'s metrics and the state
    (Train V2's report is collective, so every rank reports). A run rebuilt after it finished
    reports its final checkpoint again, so its Result holds it. A NaN or infinite loss stops
    the run (NonFiniteLossError) rather than training on garbage until the next checkpoint;
    it is checked after the step's update, but nothing is reported or saved after it.
    """

    label: str  # "[label]" starts each progress line
    loss_name: str  # "<loss_name> loss is nan at step N" when the loss is not finite
    total_steps: int
    log_every: int
    checkpoint_every: int
    batch: int  # samples per step on each worker
    world: int
    rank: int
    device: object
    checkpoint_config: dict  # config.json of the checkpoints
    checkpoint_state: Callable[[int], dict]  # state at a step; called on every rank, so it may gather
    progress: Callable[[dict], str]  # a report's metrics as the text after "[label] step N/M "
    validate: Callable[[], dict] | None = None  # held-out metrics, added to the checkpoints' reports
    advice: str | None = None  # what to try when the loss is not finite
    local_run: LocalRun | None = None
    # Throughput after warm-up (since the first report): False for a trainer whose reports never had it.
    steady_throughput: bool = True
    # The report of a run rebuilt after it finished says samples_per_s 0.0 (the diffusers' always has).
    finished_throughput: bool = False

    def run(self, step: Callable[[int], tuple], start_step: int) -> None:
        """Train from `start_step`: `step(i)` takes step i (0-based) and returns its loss tensor and a
        dict of the step's other metrics (floats, averaged over the steps between reports)."""
        if self.rank == 0:
            what = f"resuming at step {start_step}" if start_step else "starting"
            say(f"[{self.label}] {what}: {self.total_steps} steps, batch {self.batch} x {self.world} worker(s) "
                f"on {self.device}")
        if start_step >= self.total_steps:  # rebuilt after it had finished: hand back the final checkpoint
            metrics = {"step": start_step, "loss": float("nan"),
                       **({"samples_per_s": 0.0} if self.finished_throughput else {}),
                       "resumed_from_step": start_step}
            self._report(metrics, start_step, with_checkpoint=True)
            return
        current, losses, extras = start_step, [], {}
        t_last, steady = time.perf_counter(), None  # steady: (time, step) at the first report
        while current < self.total_steps:
            loss, extra = step(current)
            if not torch.isfinite(loss):
                advice = f": stopping ({self.advice})" if self.advice else ""
                raise NonFiniteLossError(f"[{self.label}] {self.loss_name} loss is {loss.item()} "
                                         f"at step {current}{advice}")
            current += 1
            losses.append(loss.item())
            for key, value in extra.items():
                extras.setdefault(key, []).append(value)
            last = current == self.total_steps
            with_checkpoint = current % self.checkpoint_every == 0 or last
            if current % self.log_every == 0 or with_checkpoint:
                now = time.perf_counter()
                metrics = {"step": current, "loss": float(np.mean(losses)),
                           **{key: float(np.mean(values)) for key, values in extras.items()},
                           "samples_per_s": len(losses) * self.batch * self.world / max(now - t_last, 1e-9),
                           "resumed_from_step": start_step}
                if steady is None:
                    steady = (now, current)
                elif self.steady_throughput:
                    metrics["steady_samples_per_s"] = \
                        (current - steady[1]) * self.batch * self.world / (now - steady[0])
                losses, extras, t_last = [], {}, now
                self._report(metrics, current, with_checkpoint)
                if self.rank == 0:
                    say(f"[{self.label}] step {current}/{self.total_steps} {self.progress(metrics)}")

    def _report(self, metrics: dict, step: int, with_checkpoint: bool) -> None:
        if not with_checkpoint:
            report_metrics(metrics, self.local_run)
            return
        if self.validate is not None:
            metrics.update(self.validate())
        state = self.checkpoint_state(step)
        report_with_checkpoint(metrics, self.rank, self.checkpoint_config, lambda: state, self.local_run)
