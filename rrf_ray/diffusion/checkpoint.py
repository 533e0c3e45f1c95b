"""Diffuser checkpoints: a directory with `config.json` and `state.pt`, usable outside Ray.

Later stages (pre-generation tasks, Tune trials, notebooks) load a trained model with
`load_diffuser(path)` and plan with it; no Ray session is needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rrf_ray.config import DiffusionSpec, GuidanceSpec
from rrf_ray.data.windows import Normalizer
from rrf_ray.diffusion.model import Cond, RewardFn, TrajectoryDiffuser

CONFIG_FILE, STATE_FILE = "config.json", "state.pt"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_diffuser_checkpoint(directory, model: TrajectoryDiffuser, normalizer: Normalizer | None,
                             state: dict) -> None:
    """Write config.json (how to rebuild the model) and state.pt (weights, EMA, optimiser, step)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, directory / STATE_FILE)
    config = {
        "kind": "trajectory_diffuser",
        "transition_dim": model.transition_dim,
        "action_dim": model.action_dim,
        "horizon": model.horizon,
        "diffusion": model.spec.model_dump(mode="json"),
        "normalizer": normalizer.to_dict() if normalizer is not None else None,
        "step": int(state.get("step", 0)),
    }
    atomic_write_bytes(directory / CONFIG_FILE, json.dumps(config, indent=2).encode())


def build_model(config: dict) -> TrajectoryDiffuser:
    return TrajectoryDiffuser(config["transition_dim"], config["action_dim"], config["horizon"],
                              DiffusionSpec.model_validate(config["diffusion"]))


@dataclass
class TrainedDiffuser:
    """A trained model with its normaliser: plans in the environment's units."""

    model: TrajectoryDiffuser
    normalizer: Normalizer | None
    step: int

    @property
    def device(self) -> torch.device:
        return self.model.sqrt_ac.device

    def to(self, device) -> "TrainedDiffuser":
        self.model.to(device)
        return self

    def normalize_obs(self, obs) -> torch.Tensor:
        obs = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        if self.normalizer is None:
            return obs
        a = self.model.action_dim
        shift = torch.as_tensor(self.normalizer.shift[a:], device=self.device)
        scale = torch.as_tensor(self.normalizer.scale[a:], device=self.device)
        return (obs - shift) / scale

    def unnormalize(self, x: torch.Tensor) -> np.ndarray:
        x = x.detach().cpu().numpy()
        return self.normalizer.unnormalize(x) if self.normalizer is not None else x

    def plan(self, start, end=None, guide: RewardFn | None = None, guidance: GuidanceSpec | None = None,
             return_chain: bool = False, seed: int | None = None):
        """Plans from observations `start` (B, obs_dim), optionally ending at `end`.

        Returns unnormalised trajectories (B, H, D) of [action | observation], and with
        return_chain also the normalised denoising chain (T+1, B, H, D).
        """
        start = self.normalize_obs(start)
        cond: Cond = {0: start}
        if end is not None:
            cond[self.model.horizon - 1] = self.normalize_obs(end)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        self.model.eval()
        out = self.model.sample(len(start), cond, guide, guidance, return_chain, generator)
        plans = self.unnormalize(out.x)
        return (plans, out.chain) if return_chain else plans


def load_diffuser(path, use_ema: bool = True, device: str | torch.device = "cpu") -> TrainedDiffuser:
    """Load a diffuser from a checkpoint directory (or a `ray.train.Checkpoint`)."""
    if hasattr(path, "as_directory"):
        with path.as_directory() as d:
            return load_diffuser(d, use_ema, device)
    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} is not a diffuser checkpoint (no {CONFIG_FILE})")
    config = json.loads((path / CONFIG_FILE).read_text())
    model = build_model(config)
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    model.load_state_dict(state["ema" if use_ema else "model"])
    normalizer = Normalizer.from_dict(config["normalizer"]) if config.get("normalizer") else None
    return TrainedDiffuser(model.to(device).eval(), normalizer, int(state["step"]))
