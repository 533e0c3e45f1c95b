"""Model checkpoints on disk: `config.json` (how to rebuild) + `state.pt` (tensors), written atomically.

Shared by the diffusers and the reward networks, and by the Ray Train loops that save
them: each loop's rank 0 writes one, then every rank reports (Train V2's report is
collective), so a rebuilt run resumes from the latest.

A local run (`LocalRun`: the loop runs in the calling process, with no TrainController,
worker actor or Train storage) keeps its checkpoints itself, under the same storage path
and run name, so it resumes the same way.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import ray.train
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rrf_ray.engine.atomic import write_atomic

CONFIG_FILE, STATE_FILE = "config.json", "state.pt"


def save_checkpoint(directory, config: dict, state: dict) -> None:
    directory = Path(directory)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(directory / STATE_FILE, buffer.getvalue())
    write_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2))


def read_checkpoint(path, kind: str) -> tuple[dict, dict]:
    """(config, state) of a checkpoint directory; a clear error if it is not one of `kind`."""
    path = Path(path)
    if not (path / CONFIG_FILE).exists() or not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{path} is not a checkpoint (needs {CONFIG_FILE} and {STATE_FILE})")
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("kind") != kind:
        raise ValueError(f"{path} holds a {config.get('kind')!r} checkpoint, not a {kind!r}")
    return config, torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def as_directory(path_or_checkpoint):
    """A context manager giving a local directory for a path or a `ray.train.Checkpoint`."""
    if hasattr(path_or_checkpoint, "as_directory"):
        return path_or_checkpoint.as_directory()
    import contextlib

    return contextlib.nullcontext(str(path_or_checkpoint))


class LocalRun:
    """A 1-worker CPU training run in the calling process, and what Ray Train would give its loop.

    Ray Train V2's own local mode (`ScalingConfig(num_workers=0)`) cannot run inside a Tune
    trial (its `ray.train.*` calls raise there), and a Tune trial is where the sweeps train.
    So the loop is called directly with this as its run: rank 0 of 1, its datasets, its
    checkpoints and its reports. Checkpoints go to `URI/local_checkpoint_NNNNNN/` (any pyarrow
    file system: a directory or s3://...); then the `LATEST` file names the newest, so a crash
    mid-write leaves LATEST on the previous, complete one, and a rebuilt run resumes from it.
    Reports are forwarded to Tune when the run is a trial's (`to_tune`), as TuneReportCallback
    does for a run on real workers.
    """

    def __init__(self, uri: str, to_tune: bool = False, datasets: dict | None = None, keep: int = 2):
        self.uri, self.to_tune, self.datasets, self.keep = uri, to_tune, dict(datasets or {}), keep
        self.last_metrics: dict | None = None

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return pafs.FileSystem.from_uri(self.uri)

    def _latest_dir(self, fs, root: str) -> str | None:
        try:
            with fs.open_input_stream(f"{root}/LATEST") as f:
                return f.read().decode().strip() or None
        except (FileNotFoundError, OSError):
            return None

    def checkpoint(self) -> ray.train.Checkpoint | None:
        fs, root = self._fs()
        name = self._latest_dir(fs, root)
        return None if name is None else ray.train.Checkpoint(f"{root}/{name}", filesystem=fs)

    def save(self, config: dict, state: dict) -> None:
        fs, root = self._fs()
        previous = self._latest_dir(fs, root)
        index = int(previous.rsplit("_", 1)[1]) + 1 if previous else 0
        name = f"local_checkpoint_{index:06d}"
        with tempfile.TemporaryDirectory() as d:  # the checkpoint format of save_checkpoint, copied to the run
            save_checkpoint(d, config, state)
            fs.create_dir(f"{root}/{name}", recursive=True)
            pafs.copy_files(d, f"{root}/{name}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        if isinstance(fs, pafs.LocalFileSystem):
            write_atomic(Path(root) / "LATEST", name)
        else:  # an object store's PUT is atomic
            with fs.open_output_stream(f"{root}/LATEST") as f:
                f.write(name.encode())
        oldest_kept = f"local_checkpoint_{index - self.keep + 1:06d}"
        for info in fs.get_file_info(pafs.FileSelector(root)):
            if info.base_name.startswith("local_checkpoint_") and info.base_name < oldest_kept:
                fs.delete_dir(info.path)

    def report(self, metrics: dict) -> None:
        self.last_metrics = dict(metrics)
        if self.to_tune:
            from ray import tune

            tune.report(dict(metrics))


def latest_state(kind: str, local_run: LocalRun | None = None) -> dict | None:
    """Inside a Ray Train worker (or a local-mode run): the state of the checkpoint to resume from, if any."""
    checkpoint = local_run.checkpoint() if local_run is not None else ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return read_checkpoint(d, kind)[1]


_FUSED_ADAM = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam, fused where this torch has the fused kernel for CPU (2.4+) and CUDA: a per-tensor
    Adam step costs ~10% of a small U-Net's CPU training step, the fused one a fifth of that."""
    params = list(params)
    fused = _FUSED_ADAM and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=True) if fused else torch.optim.Adam(params, lr=lr)


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def restore_training(kind: str, model, ema: AveragedModel, optimizer, local_run: LocalRun | None = None) -> dict | None:
    """Load the checkpoint to resume from (if any) into model, EMA and optimiser; returns its state."""
    state = latest_state(kind, local_run)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema_averager"])
        optimizer.load_state_dict(state["optimizer"])
    return state


def training_state(model, ema: AveragedModel, optimizer, step: int, **extra) -> dict:
    """What a training checkpoint holds; "ema" is the weights to use (the model's before any EMA update)."""
    return {"model": model.state_dict(),
            "ema": ema.module.state_dict() if int(ema.n_averaged) > 0 else model.state_dict(),
            "ema_averager": ema.state_dict(), "optimizer": optimizer.state_dict(), "step": int(step), **extra}


def report_metrics(metrics: dict, local_run: LocalRun | None = None) -> None:
    """`ray.train.report(metrics)`, for a real run or a local one."""
    if local_run is not None:
        local_run.report(metrics)
    else:
        ray.train.report(metrics)


def report_with_checkpoint(metrics: dict, rank: int, config: dict, state_fn, local_run: LocalRun | None = None) -> None:
    """Rank 0 writes a checkpoint (state_fn() gives its tensors); every rank reports."""
    if local_run is not None:
        local_run.save(config, state_fn())
        local_run.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            save_checkpoint(d, config, state_fn())
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)
