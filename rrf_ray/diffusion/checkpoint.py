"""Diffuser checkpoints: a directory with `config.json` and `state.pt`, usable outside Ray.

Later stages (pre-generation tasks, Tune trials, notebooks) load a trained model with
`load_diffuser(path)` and plan with it; no Ray session is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rrf_ray.data.windows import Normalizer
from rrf_ray.diffusion.model import Cond, RewardFn, TrajectoryDiffuser
from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec
from rrf_ray.engine.checkpoints import CONFIG_FILE, as_directory, read_checkpoint

KIND = "trajectory_diffuser"


def diffuser_config(model: TrajectoryDiffuser, normalizer: Normalizer | None) -> dict:
    """How to rebuild the model (config.json of its checkpoints)."""
    return {
        "kind": KIND,
        "transition_dim": model.transition_dim,
        "action_dim": model.action_dim,
        "horizon": model.horizon,
        "diffusion": model.spec.model_dump(mode="json"),
        "normalizer": normalizer.to_dict() if normalizer is not None else None,
    }


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
    with as_directory(path) as d:
        config, state = read_checkpoint(d, KIND)
    model = build_model(config)
    model.load_state_dict(state["ema" if use_ema else "model"])
    normalizer = Normalizer.from_dict(config["normalizer"]) if config.get("normalizer") else None
    return TrainedDiffuser(model.to(device).eval(), normalizer, int(state["step"]))


def load_normalizer(path) -> Normalizer | None:
    """The normaliser of a diffuser checkpoint directory, read from its config alone (no weights loaded)."""
    config = json.loads((Path(path) / CONFIG_FILE).read_text())
    if config.get("kind") != KIND:
        raise ValueError(f"{path} holds a {config.get('kind')!r} checkpoint, not a {KIND!r}")
    return Normalizer.from_dict(config["normalizer"]) if config.get("normalizer") else None
