"""Reward heatmaps over the maze (docs/method.md, Evaluation): where does a learned reward say "good"?

A window's reward is shared by every grid cell the window passes through, so a cell's
value is the mean reward of the windows that visit it. Each window counts once per
cell however many of its steps land there, so slow windows do not outweigh fast ones.
Rewards are winsorised first so that a few extreme windows cannot paint a cell, and
cells with too few visits are masked (NaN) instead of shown as noise.

Grid rows run along y (row 0 is the lowest y), columns along x, in PointMaze's frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rrf_ray.engine.atomic import write_atomic
from rrf_ray.engine.report import save_figure_atomic
from rrf_ray.maze2d.mazes import WALL, Maze


@dataclass
class Heatmap:
    """Mean window reward per grid cell; NaN where a cell had fewer than `min_visits` windows."""

    mean: np.ndarray  # (ny, nx) float, NaN = masked
    counts: np.ndarray  # (ny, nx) int, windows that visited the cell
    x_edges: np.ndarray  # (nx + 1,)
    y_edges: np.ndarray  # (ny + 1,)

    @property
    def mask(self) -> np.ndarray:
        """True where the cell has a value."""
        return np.isfinite(self.mean)

    @property
    def x_centres(self) -> np.ndarray:
        return (self.x_edges[:-1] + self.x_edges[1:]) / 2

    @property
    def y_centres(self) -> np.ndarray:
        return (self.y_edges[:-1] + self.y_edges[1:]) / 2

    @property
    def cell_size(self) -> float:
        return float(self.x_edges[1] - self.x_edges[0])

    def to_npz(self, path) -> Path:
        buf = io.BytesIO()
        np.savez_compressed(buf, mean=self.mean, counts=self.counts, x_edges=self.x_edges, y_edges=self.y_edges)
        return write_atomic(path, buf.getvalue())

    @classmethod
    def from_npz(cls, path) -> "Heatmap":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["mean"], z["counts"], z["x_edges"], z["y_edges"])


def winsorize(values: np.ndarray, tail: float) -> np.ndarray:
    """Clip to the [tail, 1 - tail] quantiles."""
    if tail <= 0 or len(values) == 0:
        return values
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return np.clip(values, lo, hi)


def maze_grid(maze: Maze, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Edges of a `cell`-sized grid over the whole map: x in [-W/2, W/2], y in [-H/2, H/2]."""
    nx = max(1, int(round(maze.width / cell)))
    ny = max(1, int(round(maze.height / cell)))
    return (np.linspace(-maze.width / 2, maze.width / 2, nx + 1),
            np.linspace(-maze.height / 2, maze.height / 2, ny + 1))


def reward_heatmap(maze: Maze, positions, rewards, cell: float = 0.1, min_visits: int = 5,
                   winsor: float = 0.005) -> Heatmap:
    """Heatmap of window rewards: positions (N, H, 2) xy of each window's steps, rewards (N,)."""
    positions = np.asarray(positions, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if positions.ndim != 3 or positions.shape[-1] != 2 or positions.shape[0] != rewards.shape[0]:
        raise ValueError(f"positions must be (N, H, 2) and rewards (N,); got {positions.shape} and {rewards.shape}")
    if not np.all(np.isfinite(rewards)):
        raise ValueError(f"{int(np.sum(~np.isfinite(rewards)))} of {len(rewards)} rewards are not finite")
    x_edges, y_edges = maze_grid(maze, cell)
    nx, ny = len(x_edges) - 1, len(y_edges) - 1
    rewards = winsorize(rewards, winsor)

    ix = np.clip(np.floor((positions[..., 0] - x_edges[0]) / cell).astype(np.int64), 0, nx - 1)
    iy = np.clip(np.floor((positions[..., 1] - y_edges[0]) / cell).astype(np.int64), 0, ny - 1)
    flat = np.sort(iy * nx + ix, axis=1)  # (N, H): cells of each window, sorted
    first = np.ones_like(flat, dtype=bool)
    first[:, 1:] = flat[:, 1:] != flat[:, :-1]  # one visit per (window, cell)
    cells = flat[first]
    window_of = np.broadcast_to(np.arange(len(rewards))[:, None], flat.shape)[first]

    counts = np.bincount(cells, minlength=nx * ny)
    sums = np.bincount(cells, weights=rewards[window_of], minlength=nx * ny)
    mean = np.full(nx * ny, np.nan)
    keep = counts >= min_visits
    mean[keep] = sums[keep] / counts[keep]
    return Heatmap(mean.reshape(ny, nx), counts.reshape(ny, nx).astype(np.int64), x_edges, y_edges)


def plot_heatmap(heatmap: Heatmap, maze: Maze | None, goal_xy=None, peak_xy=None, path=None, ax=None,
                 title: str | None = None):
    """Draw the heatmap with walls (grey), the true goal (green star) and the learned peak (white x).

    Draws into `ax` when given, else into a new figure; with `path` the figure is saved as
    a PNG (atomically). Uses matplotlib's object API (Agg canvas), never pyplot's global
    state, so it is safe in Ray workers and headless machines. Returns the axes.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if ax is None:
        fig = Figure(figsize=(1.0 + 0.6 * heatmap.mean.shape[1] * heatmap.cell_size,
                              0.6 + 0.6 * heatmap.mean.shape[0] * heatmap.cell_size))
        ax = fig.add_subplot(1, 1, 1)
    fig = ax.figure
    ax.set_facecolor("#f4f4f4")
    values = np.ma.masked_invalid(heatmap.mean)
    mesh = ax.pcolormesh(heatmap.x_edges, heatmap.y_edges, values, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.03, label="mean window reward")
    if maze is not None:
        for r, row in enumerate(maze.layout):
            for c, ch in enumerate(row):
                if ch == WALL:
                    x, y = maze.rowcol_to_xy((r, c))
                    ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1.0, 1.0, facecolor="#8a8a8a",
                                           edgecolor="#8a8a8a", linewidth=0.5, zorder=2))
    if goal_xy is not None:
        ax.plot(*np.asarray(goal_xy, float), marker="*", color="limegreen", markersize=14,
                markeredgecolor="black", markeredgewidth=0.8, linestyle="none", zorder=4, label="goal")
    if peak_xy is not None and np.all(np.isfinite(np.asarray(peak_xy, float))):
        ax.plot(*np.asarray(peak_xy, float), marker="x", color="white", markersize=10, markeredgewidth=2.5,
                linestyle="none", zorder=5, label="peak")
    ax.set_xlim(heatmap.x_edges[0], heatmap.x_edges[-1])
    ax.set_ylim(heatmap.y_edges[0], heatmap.y_edges[-1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if path is not None:
        save_figure_atomic(fig, path)
    return ax
