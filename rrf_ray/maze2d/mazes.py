"""Maze layouts, goals, and the one conversion between maze units and PointMaze's xy frame.

Maze units are (row, column) with cell centres at integers, as in the paper's goal
table. PointMaze's frame is centred on the map and y-flipped:
x = (c + 0.5) - W/2, y = H/2 - (r + 0.5) for a W-column, H-row map.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

WALL, FREE = "#", "O"

DEFAULT_LAYOUTS: dict[str, list[str]] = {
    "open": ["#######", "#OOOOO#", "#OOOOO#", "#OOOOO#", "#######"],
    "umaze": ["#####", "#OOO#", "###O#", "#OOO#", "#####"],
    "medium": [
        "########", "#OO##OO#", "#OO#OOO#", "##OOO###",
        "#OO#OOO#", "#O#OO#O#", "#OOO#OO#", "########",
    ],
    "large": [
        "############", "#OOOO#OOOOO#", "#O##O#O#O#O#", "#OOOOOO#OOO#",
        "#O####O###O#", "#OO#O#OOOOO#", "##O#O#O#O###", "#OO#OOO#OOO#",
        "############",
    ],
}

# Goals 1..8 of each maze, (row, column) in maze units (docs/datasets.md).
DEFAULT_GOALS: dict[str, list[tuple[float, float]]] = {
    "open": [(1, 1), (1, 5), (1.3, 1.7), (2, 3), (2.3, 4.3), (2.7, 3.1), (3, 1), (3, 5)],
    "umaze": [(1, 1), (1, 2), (1, 3), (1.3, 2.7), (2, 3), (3, 1), (3, 2), (3, 3)],
    "medium": [(1, 1), (1, 6), (2, 2), (4, 4), (4, 6), (5, 3), (6, 1), (6, 6)],
    "large": [(1, 1), (1, 10), (3, 6), (3, 8), (5, 2), (5, 4), (7, 1), (7, 10)],
}


class MazeError(ValueError):
    """A layout or goal that cannot be used; the message names the maze and goal."""


@dataclass(frozen=True)
class Maze:
    """A named layout with its goals (1-based goal indices, as in the paper)."""

    name: str
    layout: tuple[str, ...]
    goals: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        rows = self.layout
        if not rows or any(len(r) != len(rows[0]) for r in rows):
            raise MazeError(f"maze {self.name!r}: layout rows must all have the same length")
        bad = {ch for r in rows for ch in r} - {WALL, FREE}
        if bad:
            raise MazeError(f"maze {self.name!r}: layout may only use '#' and 'O', found {sorted(bad)}")
        if not any(FREE in r for r in rows):
            raise MazeError(f"maze {self.name!r}: layout has no free cell")
        for k, goal in enumerate(self.goals, start=1):
            self._check_goal(k, goal)

    def _check_goal(self, k: int, goal: tuple[float, float]) -> None:
        r, c = goal
        if not (-0.5 <= r < self.height - 0.5 and -0.5 <= c < self.width - 0.5):
            raise MazeError(f"maze {self.name!r} goal {k} {goal}: outside the {self.height}x{self.width} map")
        if not self.is_free(*self.cell_of(goal)):
            raise MazeError(f"maze {self.name!r} goal {k} {goal}: inside a wall")

    @classmethod
    def default(cls, name: str) -> "Maze":
        if name not in DEFAULT_LAYOUTS:
            raise MazeError(f"unknown maze {name!r}; known: {', '.join(DEFAULT_LAYOUTS)}")
        return cls(name, tuple(DEFAULT_LAYOUTS[name]), tuple(DEFAULT_GOALS[name]))

    @property
    def height(self) -> int:
        return len(self.layout)

    @property
    def width(self) -> int:
        return len(self.layout[0])

    def is_free(self, row: int, col: int) -> bool:
        return 0 <= row < self.height and 0 <= col < self.width and self.layout[row][col] == FREE

    @cached_property
    def free_cells(self) -> list[tuple[int, int]]:
        return [(r, c) for r in range(self.height) for c in range(self.width) if self.layout[r][c] == FREE]

    def sample_rowcol(self, rng: np.random.Generator, margin: float = 0.1) -> tuple[float, float]:
        """Uniform over the free area: a free cell at random, then uniform inside it, `margin` from its edges."""
        r, c = self.free_cells[rng.integers(len(self.free_cells))]
        offset = rng.uniform(-(0.5 - margin), 0.5 - margin, size=2)
        return float(r + offset[0]), float(c + offset[1])

    @property
    def maze_map(self) -> list[list[int]]:
        """gymnasium-robotics' map: 1 = wall, 0 = free."""
        return [[1 if ch == WALL else 0 for ch in row] for row in self.layout]

    def goal(self, k: int) -> tuple[float, float]:
        """Goal k (1-based) in maze units."""
        if not 1 <= k <= len(self.goals):
            raise MazeError(f"maze {self.name!r} has goals 1..{len(self.goals)}, not goal {k}")
        return self.goals[k - 1]

    def goal_xy(self, k: int) -> np.ndarray:
        return self.rowcol_to_xy(self.goal(k))

    # -- the one conversion --------------------------------------------------------
    def rowcol_to_xy(self, rowcol) -> np.ndarray:
        """Maze units (row, col), any leading shape, to PointMaze xy."""
        rc = np.asarray(rowcol, dtype=np.float64)
        x = rc[..., 1] + 0.5 - self.width / 2
        y = self.height / 2 - (rc[..., 0] + 0.5)
        return np.stack([x, y], axis=-1)

    def xy_to_rowcol(self, xy) -> np.ndarray:
        p = np.asarray(xy, dtype=np.float64)
        col = p[..., 0] + self.width / 2 - 0.5
        row = self.height / 2 - p[..., 1] - 0.5
        return np.stack([row, col], axis=-1)

    def cell_of(self, rowcol) -> tuple[int, int]:
        """Integer cell containing a point given in maze units."""
        r, c = np.floor(np.asarray(rowcol, dtype=np.float64) + 0.5).astype(int)
        return int(r), int(c)

    def cell_of_xy(self, xy) -> tuple[int, int]:
        # Scalar arithmetic: the controller calls this every environment step.
        col = float(xy[0]) + self.width / 2 - 0.5
        row = self.height / 2 - float(xy[1]) - 0.5
        return math.floor(row + 0.5), math.floor(col + 0.5)


def random_goals(layout, n: int, seed: int, margin: float = 0.1) -> list[tuple[float, float]]:
    """`n` goals drawn uniformly inside the free cells of `layout`, reproducibly from `seed`
    (rounded to 1e-3 maze units, so the spec that records them reads the same back). The layout
    is part of the seed, so two mazes drawn with one seed get independent goals."""
    maze = Maze("random-goals", tuple(layout), ())
    rng = np.random.default_rng([seed, n, zlib.crc32("/".join(layout).encode())])
    return [(round(r, 3), round(c, 3)) for r, c in (maze.sample_rowcol(rng, margin) for _ in range(n))]
