"""The known reward the experts follow: linear in the thesis's maze coordinates, as data (TrueRewardSpec).

The thesis measures x = column + 0.5 and y = row + 0.5 from the top-left corner of the map,
walls included; PointMaze's frame is centred with y up, so x = x_pm + W/2 and y = H/2 - y_pm.
The same function scores environment states (returns of rollouts), windows (ERC) and, on
normalised plans, guides the base diffuser (the experts, and the "true reward" method).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rrf_ray.data.windows import Normalizer
from rrf_ray.maze2d.mazes import Maze

# |w| of the thesis's 5 (x + y): guidance scales are calibrated for a reward this steep.
REFERENCE_NORM = float(np.hypot(5.0, 5.0))


class LinearMazeReward:
    """r(s) = offset + w_x x + w_y y for PointMaze positions (..., 2)."""

    def __init__(self, maze: Maze, weights, offset: float = 0.0):
        self.maze, self.weights, self.offset = maze, np.asarray(weights, dtype=np.float64), float(offset)

    def maze_xy(self, positions) -> np.ndarray:
        """PointMaze xy (..., 2) -> the thesis's (x, y): column + 0.5, row + 0.5."""
        p = np.asarray(positions, dtype=np.float64)
        return np.stack([p[..., 0] + self.maze.width / 2, self.maze.height / 2 - p[..., 1]], axis=-1)

    def __call__(self, positions) -> np.ndarray:
        return self.offset + self.maze_xy(positions) @ self.weights

    @property
    def pointmaze_weights(self) -> np.ndarray:
        """d r / d (x_pm, y_pm): the reward's gradient in PointMaze's frame (y points up there)."""
        return np.array([self.weights[0], -self.weights[1]])

    def guide(self, normalizer: Normalizer, action_dim: int) -> PlanReturnGuide:
        """The plan's return as a guide, rescaled to the thesis reward's steepness (|w| = 5 sqrt 2).

        An optimal policy does not change when the reward is multiplied by a positive constant, but a
        guided sampler's plans do; rescaling keeps `guidance.scale` meaning the same for every true
        reward, so 2 (x + y) and 5 (x + y) make the same experts. Returns are still scored with r itself.
        """
        return PlanReturnGuide(self, normalizer, action_dim, gain=REFERENCE_NORM / float(np.hypot(*self.weights)))

    def best_cell(self) -> tuple[int, int]:
        """The free cell whose centre scores highest (where the experts should end up)."""
        cells = self.maze.free_cells
        centres = self.maze.rowcol_to_xy(np.asarray(cells, dtype=np.float64))
        return cells[int(np.argmax(self(centres)))]


class PlanReturnGuide(nn.Module):
    """gain x the sum over a normalised plan's rows of r(position): a differentiable guide rho(x, t) (t unused)."""

    def __init__(self, reward: LinearMazeReward, normalizer: Normalizer, action_dim: int, gain: float = 1.0):
        super().__init__()
        a = action_dim
        scale = torch.as_tensor(normalizer.scale[a:a + 2], dtype=torch.float32)
        shift = torch.as_tensor(normalizer.shift[a:a + 2], dtype=torch.float32)
        w = torch.as_tensor(reward.pointmaze_weights, dtype=torch.float32)
        const = reward.offset + reward.weights[0] * reward.maze.width / 2 + reward.weights[1] * reward.maze.height / 2
        # r = const + w . (shift + scale * x_norm): one linear map of the normalised position columns.
        self.register_buffer("w_norm", gain * w * scale)
        self.register_buffer("bias", gain * ((w * shift).sum() + torch.tensor(float(const))))
        self.a = a

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pos = x[..., self.a:self.a + 2]
        return (pos @ self.w_norm + self.bias).sum(dim=-1)
