"""One Maze2D trial's evaluation (docs/method.md, Evaluation): held-out windows in, metrics and heatmap out.

The reward function is any callable on normalised windows, so the same code scores a
trained relative reward network, the true reward, or a baseline. Positions for the
heatmap and the true return come from the unnormalised observations of the same windows
the reward saw. Base windows make the heatmap and ERC (they cover the maze); base vs
expert windows make discriminability. A reward of one state (a window MLP of the position) is also
compared with −distance-to-goal per step by EPIC and STARC (metrics/reward_distance.py), which do
not see potential shaping; on one transition of each of up to REWARD_DISTANCE_WINDOWS base windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rrf_ray.data.windows import TrajectoryWindows
from rrf_ray.maze2d.goal_recovery import recover_goal
from rrf_ray.maze2d.heatmap import plot_heatmap, reward_heatmap
from rrf_ray.maze2d.mazes import Maze
from rrf_ray.metrics.discriminability import discriminability
from rrf_ray.metrics.erc import erc
from rrf_ray.metrics.reward_distance import distances_to_truth, state_reward_of_windows, window_transitions

REWARD_DISTANCE_WINDOWS = 2000  # transitions for EPIC/STARC: enough for a ±0.02 interval, cheap for BCa
RewardFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class TrialMetrics:
    goal_recovered: bool
    goal_distance: float
    peak_x: float
    peak_y: float
    accuracy: float
    roc_auc: float
    erc: float
    n_base_windows: int
    n_expert_windows: int
    epic: float = float("nan")  # NaN: the reward has no per-step form (ERC only)
    epic_low: float = float("nan")
    epic_high: float = float("nan")
    starc: float = float("nan")

    def as_dict(self) -> dict:
        """Plain Python bools, floats and ints (what Ray Tune and JSON expect)."""
        d = asdict(self)
        d["goal_recovered"] = bool(d["goal_recovered"])
        for k in ("goal_distance", "peak_x", "peak_y", "accuracy", "roc_auc", "erc", "epic", "epic_low", "epic_high",
                  "starc"):
            d[k] = float(d[k])
        for k in ("n_base_windows", "n_expert_windows"):
            d[k] = int(d[k])
        return d


def true_step_reward(positions, goal_xy) -> np.ndarray:
    """Minus the distance to the goal of positions (..., 2): the true reward of one step."""
    p = np.asarray(positions, dtype=np.float64)
    return -np.linalg.norm(p - np.asarray(goal_xy, dtype=np.float64), axis=-1)


def true_maze_return(positions, goal_xy) -> np.ndarray:
    """(N,) mean over each window's steps of minus the distance to the goal; positions (N, H, 2)."""
    return true_step_reward(positions, goal_xy).mean(axis=-1)


def choose_windows(windows: TrajectoryWindows, max_windows: int, rng: np.random.Generator) -> np.ndarray:
    """All window indices, or a seeded sorted subsample of `max_windows` of them."""
    n = len(windows)
    if n <= max_windows:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_windows, replace=False))


def score_windows(reward_fn: RewardFn, windows: TrajectoryWindows, idx: np.ndarray, batch_size: int,
                  with_positions: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Rewards (N,) of windows `idx` and, if asked, their xy positions (N, H, 2) in PointMaze's frame."""
    rewards = np.empty(len(idx), dtype=np.float64)
    positions = np.empty((len(idx), windows.horizon, 2), dtype=np.float32) if with_positions else None
    a = windows.action_dim
    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        x = np.ascontiguousarray(windows.batch(sel), dtype=np.float32)
        r = np.asarray(reward_fn(x), dtype=np.float64).reshape(-1)
        if r.shape[0] != len(sel):
            raise ValueError(f"reward_fn returned {r.shape[0]} rewards for a batch of {len(sel)} windows")
        rewards[start:start + len(sel)] = r
        if positions is not None:
            raw = windows.normalizer.unnormalize(x) if windows.normalizer is not None else x
            positions[start:start + len(sel)] = raw[..., a:a + 2]
    return rewards, positions


def evaluate_reward(reward_fn: RewardFn, maze: Maze, goal_index: int, base_windows: TrajectoryWindows,
                    expert_windows: TrajectoryWindows, out_dir, max_windows: int = 20000, seed: int = 0,
                    batch_size: int = 4096, state_reward: bool = False) -> TrialMetrics:
    """Score held-out windows with `reward_fn` and write heatmap.npz / heatmap.png into `out_dir`.
    state_reward: `reward_fn` sums one function of each row's state, so EPIC and STARC apply."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    goal_xy = maze.goal_xy(goal_index)

    base_idx = choose_windows(base_windows, max_windows, rng)
    expert_idx = choose_windows(expert_windows, max_windows, rng)
    base_r, base_pos = score_windows(reward_fn, base_windows, base_idx, batch_size, with_positions=True)
    expert_r, _ = score_windows(reward_fn, expert_windows, expert_idx, batch_size, with_positions=False)

    heatmap = reward_heatmap(maze, base_pos, base_r)
    recovery = recover_goal(heatmap, goal_xy)
    accuracy, auc = discriminability(base_r, expert_r, seed=seed)
    metrics = TrialMetrics(
        goal_recovered=recovery.success,
        goal_distance=recovery.distance,
        peak_x=float(recovery.peak_xy[0]),
        peak_y=float(recovery.peak_xy[1]),
        accuracy=accuracy,
        roc_auc=auc,
        erc=erc(base_r, true_maze_return(base_pos, goal_xy)),
        n_base_windows=len(base_idx),
        n_expert_windows=len(expert_idx),
    )
    if state_reward:
        few = np.sort(rng.choice(base_idx, size=min(len(base_idx), REWARD_DISTANCE_WINDOWS), replace=False))
        d = distances_to_truth(state_reward_of_windows(reward_fn, base_windows.normalizer, base_windows.action_dim),
                               lambda s: torch.as_tensor(true_step_reward(s[:, :2].numpy(), goal_xy)),
                               window_transitions(base_windows, few, seed), gamma=1.0, seed=seed)
        metrics.epic, metrics.epic_low, metrics.epic_high, metrics.starc = (d[k] for k in ("epic", "epic_low",
                                                                                          "epic_high", "starc"))

    heatmap.to_npz(out_dir / "heatmap.npz")
    rowcol = ", ".join(f"{v:g}" for v in maze.goal(goal_index))
    verdict = "recovered" if recovery.success else "not recovered"
    dist = "no peak" if not np.isfinite(recovery.distance) else f"d = {recovery.distance:.2f}"
    plot_heatmap(heatmap, maze, goal_xy, peak_xy=recovery.peak_xy, path=out_dir / "heatmap.png",
                 title=f"{maze.name} goal {goal_index} ({rowcol}): {verdict}, {dist}")
    return metrics
