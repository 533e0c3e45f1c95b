"""One protocol for every method: true-reward returns of receding-horizon rollouts, ERC of learned rewards.

Behaviour: rollouts from the evaluation start points (EvaluationSpec), each scored by the sum of
the true per-step reward over its steps. Reward quality: ERC (Pearson distance) between the
learned and the true return of held-out base windows drawn across the held-out episodes (the
thesis scored 100 overlapping windows of one episode; a set spread over the maze is a stricter
and fairer test), and the learned reward's heatmap over the maze. A learned reward with a
per-step form (a window net of the state, AIRL's g(s)) is also compared with the true per-step
reward by EPIC and STARC (metrics/reward_distance.py), which ERC's sensitivity to potential
shaping does not touch; a reward of whole plans has no per-step form and gets ERC only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rrf_ray.data.windows import TrajectoryWindows
from rrf_ray.irl.rollouts import Actor, Rollouts, rollout, start_table
from rrf_ray.irl.spec import EvaluationSpec
from rrf_ray.irl.true_reward import LinearMazeReward
from rrf_ray.metrics.erc import erc
from rrf_ray.metrics.reward_distance import distances_to_truth, state_reward_of_windows, window_transitions

GAMMA = 1.0  # returns here are undiscounted sums over a window, so shaping is canonicalised away at γ = 1


@dataclass
class BehaviourResult:
    returns: np.ndarray  # (B,) true return of each rollout
    rollouts: Rollouts

    def summary(self) -> dict:
        return {"return_mean": float(self.returns.mean()), "return_std": float(self.returns.std()),
                "n_rollouts": len(self.returns)}


def rollout_returns(true_reward: LinearMazeReward, rollouts: Rollouts) -> np.ndarray:
    """Sum over each rollout's steps of r(s_{t+1}) (the state each action led to)."""
    return true_reward(rollouts.positions[:, 1:]).sum(axis=1)


def evaluate_behaviour(actor: Actor, true_reward: LinearMazeReward, spec: EvaluationSpec, seed: int,
                       progress: str | None = None) -> BehaviourResult:
    starts = start_table(spec.starts, spec.rollouts_per_start)
    r = rollout(true_reward.maze, actor, starts, spec.steps, spec.replan_every, seed=spec.seed + seed,
                progress=progress)
    return BehaviourResult(rollout_returns(true_reward, r), r)


def erc_windows(windows: TrajectoryWindows, n: int, seed: int) -> np.ndarray:
    """Indices of up to n held-out windows drawn uniformly over all held-out episodes (seeded, sorted)."""
    rng = np.random.default_rng([seed, 0xE4C])
    if len(windows) <= n:
        return np.arange(len(windows))
    return np.sort(rng.choice(len(windows), size=n, replace=False))


@torch.no_grad()
def score_reward(reward, windows: TrajectoryWindows, idx: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Learned returns R(window) (N,) of normalised windows; reward(x, t) a torch module or callable."""
    out = []
    for i in range(0, len(idx), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows.batch(idx[i:i + batch_size]), dtype=np.float32))
        out.append(reward(x, torch.zeros(len(x), dtype=torch.long)).reshape(-1).double().numpy())
    return np.concatenate(out)


def window_positions(windows: TrajectoryWindows, idx: np.ndarray) -> np.ndarray:
    """Unnormalised xy (N, H, 2) of windows `idx`."""
    raw = windows.normalizer.unnormalize(windows.batch(idx)) if windows.normalizer is not None else windows.batch(idx)
    a = windows.action_dim
    return raw[..., a:a + 2]


@dataclass
class RewardQuality:
    erc: float
    learned: np.ndarray
    true: np.ndarray
    positions: np.ndarray


def evaluate_reward(reward, true_reward: LinearMazeReward, windows: TrajectoryWindows, n: int,
                    seed: int) -> RewardQuality:
    idx = erc_windows(windows, n, seed)
    positions = window_positions(windows, idx)
    learned = score_reward(reward, windows, idx)
    true = true_reward(positions).sum(axis=1)
    return RewardQuality(erc(learned, true), learned, true, positions)


def save_reward_heatmap(quality: RewardQuality, maze, path: Path, title: str) -> Path:
    """The learned reward over the maze (mean learned return of the windows through each cell)."""
    from rrf_ray.maze2d.heatmap import plot_heatmap, reward_heatmap

    heatmap = reward_heatmap(maze, quality.positions, quality.learned, min_visits=2)
    heatmap.to_npz(Path(path).with_suffix(".npz"))
    plot_heatmap(heatmap, maze, path=path, title=title)
    return Path(path)



def reward_distances(reward, normalizer, action_dim: int, true_reward: LinearMazeReward, windows: TrajectoryWindows,
                     n: int, seed: int) -> dict:
    """EPIC and STARC [95% interval] of a learned window reward of one state against the true per-step reward,
    on one transition of each of the held-out windows ERC scores."""
    @torch.no_grad()
    def score(x: np.ndarray) -> np.ndarray:
        return reward(torch.from_numpy(x), torch.zeros(len(x), dtype=torch.long)).reshape(-1).double().numpy()

    learned = state_reward_of_windows(score, normalizer, action_dim)
    truth = lambda s: torch.as_tensor(true_reward(s[:, :2].numpy()), dtype=torch.float64)  # noqa: E731
    coverage = window_transitions(windows, erc_windows(windows, n, seed), seed)
    return distances_to_truth(learned, truth, coverage, gamma=GAMMA, seed=seed)
