"""Minari dataset -> normalised, contiguous trajectory windows of [action | observation].

Each episode becomes rows [a_t | s_t] for t < L plus a last row [0 | s_L], so expert
windows include the arrival at the goal. Episodes shorter than a window are padded by
repeating that last row (the ball rests where it ended, with zero action). Windows are
views into one array of rows, so a 10M-transition dataset is not copied per window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from rrf_ray.data.minari_io import HELDOUT_KEY, DatasetError, dataset_dir, heldout_episodes
from rrf_ray.engine.spec import Strict

Split = Literal["train", "heldout", "all"]


class WindowSpec(Strict):
    """Trajectory windows (docs/method.md, Models): `horizon` rows taken every `stride` steps."""

    horizon: int = Field(256, gt=0)
    stride: int = Field(1, gt=0)
    pad_end: bool = Field(False, description="windows may start at every step, the tail resting at the episode end")

    @property
    def span(self) -> int:
        """Environment steps covered by one window."""
        return (self.horizon - 1) * self.stride + 1


@dataclass
class Normalizer:
    """Per-dimension affine map to [-1, 1] (min/max, Maze2D) or to zero mean, unit std (locomotion)."""

    kind: Literal["minmax", "standard"]
    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray, kind: Literal["minmax", "standard"] = "minmax") -> "Normalizer":
        rows = np.asarray(rows, dtype=np.float64)
        if kind == "minmax":
            lo, hi = rows.min(axis=0), rows.max(axis=0)
            shift, scale = (hi + lo) / 2, (hi - lo) / 2
        else:
            shift, scale = rows.mean(axis=0), rows.std(axis=0)
        return cls(kind, shift.astype(np.float32), np.maximum(scale, 1e-6).astype(np.float32))

    def normalize(self, x):
        return (x - self.shift) / self.scale

    def unnormalize(self, x):
        return x * self.scale + self.shift

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(d["kind"], np.asarray(d["shift"], np.float32), np.asarray(d["scale"], np.float32))


class TrajectoryWindows:
    """Windows of `horizon` rows taken every `stride` steps, indexable and batchable."""

    def __init__(self, rows: np.ndarray, starts: np.ndarray, episode_of_window: np.ndarray,
                 horizon: int, stride: int, normalizer: Normalizer | None, action_dim: int):
        self.rows = rows
        self.starts = starts
        self.episode_of_window = episode_of_window
        self.horizon, self.stride = horizon, stride
        self.normalizer = normalizer
        self.action_dim = action_dim
        self._offsets = np.arange(horizon) * stride

    @classmethod
    def from_array(cls, windows: np.ndarray, action_dim: int,
                   normalizer: Normalizer | None = None) -> "TrajectoryWindows":
        """Windows given directly as an (N, H, D) array, already normalised."""
        n, h, d = windows.shape
        rows = np.ascontiguousarray(windows, dtype=np.float32).reshape(n * h, d)
        return cls(rows, np.arange(n) * h, np.arange(n), h, 1, normalizer, action_dim)

    @property
    def transition_dim(self) -> int:
        return self.rows.shape[1]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i) -> np.ndarray:
        return self.rows[self.starts[i] + self._offsets]

    def batch(self, idx) -> np.ndarray:
        """(B, horizon, D) float32 windows for window indices `idx`."""
        return self.rows[self.starts[np.asarray(idx)][:, None] + self._offsets]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.batch(rng.integers(len(self), size=n))


def episode_rows(observations: np.ndarray, actions: np.ndarray, min_rows: int) -> np.ndarray:
    """[a_t | s_t] rows plus [0 | s_L], padded to `min_rows` by repeating the last row."""
    obs = np.asarray(observations, dtype=np.float32)
    act = np.asarray(actions, dtype=np.float32)
    last = np.concatenate([np.zeros(act.shape[1], np.float32), obs[-1]])[None]
    rows = np.concatenate([np.concatenate([act, obs[:-1]], axis=1), last], axis=0)
    if len(rows) < min_rows:
        rows = np.concatenate([rows, np.repeat(last, min_rows - len(rows), axis=0)], axis=0)
    return rows


def open_dataset(did: str, root=None, how_to_make: str | None = None):
    """The local Minari dataset `did`, or an error that says how to make or fetch it."""
    from minari import MinariDataset

    path = dataset_dir(did, root)
    if not (path / "data" / "metadata.json").exists():
        hint = how_to_make or "Put it under the Minari datasets root (MINARI_DATASETS_PATH) or pass the right root."
        raise DatasetError(f"no Minari dataset {did!r} at {path}. {hint}")
    return MinariDataset(path / "data")


def split_episodes(dataset, split: Split) -> np.ndarray:
    """Episode ids of a split; the held-out ids come from the dataset's metadata."""
    n = dataset.total_episodes
    meta = dataset.storage.metadata
    held = meta.get(HELDOUT_KEY)
    if held is None:  # a dataset rrf_ray did not make: a fixed seeded 10%
        held = heldout_episodes(n, 0.1, seed=0)
    held = np.asarray(held, dtype=np.int64)
    if split == "heldout":
        return held
    if split == "all":
        return np.arange(n)
    if split == "train":
        return np.setdiff1d(np.arange(n), held)
    raise ValueError(f"split must be train, heldout or all, not {split!r}")


def load_windows(did: str, horizon: int, stride: int = 1, split: Split = "train", root=None,
                 normalizer: Normalizer | Literal["minmax", "standard"] = "minmax",
                 pad_end: bool = False, how_to_make: str | None = None) -> TrajectoryWindows:
    """Windows of a local Minari dataset.

    `normalizer` is a fitted Normalizer (share one between base and expert models so
    their outputs live in the same space) or the kind to fit on this split's rows.
    pad_end: a window may start at any step of an episode, its tail resting at the
    episode's end (Janner's `use_padding`); otherwise windows lie inside the episode
    (one padded window for an episode shorter than a window). how_to_make: what a missing
    dataset's error tells the user to run.
    """
    dataset = open_dataset(did, root, how_to_make)
    episodes = split_episodes(dataset, split)
    span = (horizon - 1) * stride + 1
    chunks, starts, owners, offset = [], [], [], 0
    action_dim = None
    for ep in dataset.iterate_episodes(episode_indices=episodes.tolist()):
        obs, act = ep.observations, ep.actions
        if isinstance(obs, dict):
            obs = obs["observation"]
        action_dim = act.shape[1]
        rows = episode_rows(obs, act, len(obs) + span - 1 if pad_end else span)
        n_windows = len(obs) if pad_end else len(rows) - span + 1
        chunks.append(rows)
        starts.append(offset + np.arange(n_windows))
        owners.append(np.full(n_windows, ep.id))
        offset += len(rows)
    if not chunks:
        raise DatasetError(f"dataset {did!r} has no episodes in split {split!r}")
    all_rows = np.concatenate(chunks)
    if not isinstance(normalizer, Normalizer):
        normalizer = Normalizer.fit(all_rows, normalizer)
    all_rows = normalizer.normalize(all_rows).astype(np.float32)
    return TrajectoryWindows(all_rows, np.concatenate(starts), np.concatenate(owners), horizon, stride,
                             normalizer, action_dim)
