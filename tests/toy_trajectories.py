"""Toy trajectory datasets for diffusion tests: straight-line plans of [action | x, y]."""

import numpy as np


def line_plans(starts: np.ndarray, ends: np.ndarray, horizon: int) -> np.ndarray:
    frac = np.linspace(0, 1, horizon)[None, :, None]
    obs = starts[:, None, :] * (1 - frac) + ends[:, None, :] * frac
    speed = np.zeros((len(starts), horizon, 1))
    speed[:, :-1, 0] = np.linalg.norm(np.diff(obs, axis=1), axis=-1) * 3
    return np.concatenate([speed, obs], axis=-1).astype(np.float32)


def to_one_point(n: int, point=(0.5, -0.5), horizon: int = 16, seed: int = 0) -> np.ndarray:
    """Every plan ends at `point`, from uniform random starts."""
    rng = np.random.default_rng(seed)
    starts = rng.uniform(-0.9, 0.9, size=(n, 2))
    return line_plans(starts, np.tile(np.asarray(point, float), (n, 1)), horizon)


def spread(n: int, horizon: int = 16, seed: int = 0) -> np.ndarray:
    """Random starts to random ends: a reward can pick among many endpoints."""
    rng = np.random.default_rng(seed)
    return line_plans(rng.uniform(-0.8, 0.8, (n, 2)), rng.uniform(-0.8, 0.8, (n, 2)), horizon)
