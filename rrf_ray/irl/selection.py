"""Choosing a learned reward's guidance scale without the true reward and without the report rollouts.

The criterion (docs/irl-protocol.md): plans of the base diffuser guided by the learned reward at
each candidate scale, each conditioned on the first state of a selection-only expert segment (expert
episodes that no method trains on), compared with those segments over their K rows (MSE over
irl.compare_dims); the closest wins. Every candidate draws the same sampling noise, so candidates differ
by their scale alone. Nothing here takes the true reward: the functions' arguments cannot carry it.
The report rollouts run once, at the chosen scale (`select_then_evaluate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch

CRITERION = "K-row MSE of guided base plans to held-out expert segments"
T = TypeVar("T")


@dataclass(frozen=True)
class Selection:
    """Candidate scales, their distances on the selection data (NaN: the guided plans diverged), the choice."""

    candidates: list[float]
    distances: list[float]
    chosen: float

    def metrics(self, prefix: str = "selection") -> dict:
        return {f"{prefix}_candidates": [float(c) for c in self.candidates],
                f"{prefix}_distances": [float(d) for d in self.distances]}


def choose(candidates, distances) -> float:
    """The candidate of least finite distance (the first such on ties); ValueError if none is finite."""
    finite = [(d, i) for i, d in enumerate(distances) if d is not None and math.isfinite(d)]
    if not finite:
        raise ValueError(f"no guidance scale of {list(candidates)} gave finite plan distances: {list(distances)}")
    return float(candidates[min(finite)[1]])


def select_scale(candidates, distance: Callable[[float], float]) -> Selection:
    """Evaluate `distance(scale)` (the selection criterion, on selection data only) at every candidate."""
    candidates = [float(c) for c in candidates]
    distances = [float(distance(c)) for c in candidates]
    return Selection(candidates, distances, choose(candidates, distances))


def select_then_evaluate(candidates, distance: Callable[[float], float],
                         evaluate: Callable[[float], T]) -> tuple[Selection, T]:
    """Select a scale by `distance` alone, then run `evaluate` (the report rollouts) once, at that scale:
    what is reported is the report-data score of the selection's choice, never a maximum over candidates."""
    selection = select_scale(candidates, distance)
    return selection, evaluate(selection.chosen)


@torch.no_grad()
def plan_distance(model, segments, reward, guidance, k: int, dims=None, seed: int = 0) -> float:
    """K-row MSE between plans of `model` from each segment's first state (guided by `reward` under `guidance`,
    or unguided when `reward` is None) and the (N, K, D) normalised segments; noise from `seed`."""
    seg = torch.as_tensor(np.asarray(segments), dtype=torch.float32, device=model.sqrt_ac.device)
    dims = list(range(seg.shape[-1])) if dims is None else list(dims)
    cond = {0: seg[:, 0, model.action_dim:]}
    generator = torch.Generator(device=seg.device).manual_seed(int(seed))
    plans = model.sample(len(seg), cond, reward, guidance if reward is not None else None, generator=generator).x
    return float(((plans[:, :k, dims] - seg[:, :, dims]) ** 2).mean())
