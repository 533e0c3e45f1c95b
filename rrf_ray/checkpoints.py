"""Model checkpoints on disk: `config.json` (how to rebuild) + `state.pt` (tensors), written atomically.

Shared by the diffusers and the reward networks, and by the Ray Train loops that save
them: each loop's rank 0 writes one, then every rank reports (Train V2's report is
collective), so a rebuilt run resumes from the latest.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import ray.train
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rrf_ray.atomic import write_atomic

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


def latest_state(kind: str) -> dict | None:
    """Inside a Ray Train worker: the state of the checkpoint to resume from, if any."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return read_checkpoint(d, kind)[1]


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def restore_training(kind: str, model, ema: AveragedModel, optimizer) -> dict | None:
    """Load the checkpoint to resume from (if any) into model, EMA and optimiser; returns its state."""
    state = latest_state(kind)
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


def report_with_checkpoint(metrics: dict, rank: int, config: dict, state_fn) -> None:
    """Rank 0 writes a checkpoint (state_fn() gives its tensors); every rank reports."""
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            save_checkpoint(d, config, state_fn())
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)
