"""D4RL's Maze2D expert: Q-iteration over free cells for waypoints, then a PD law.

Q-iteration (value iteration on the 4-connected cell graph, reward 1 at the goal cell)
gives, for each goal cell, the next cell to move to from every free cell. The PD law
a = p*(w - pos) - d*vel drives the ball to successive cell centres, and finally to the
continuous goal itself.
"""

from __future__ import annotations

import math

import numpy as np

from rrf_ray.maze2d.mazes import Maze

_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


def next_cell_table(maze: Maze, goal_cell: tuple[int, int], gamma: float = 0.99, sweeps: int = 50) -> dict:
    """Greedy next cell from every free cell towards `goal_cell` (the goal cell maps to itself)."""
    cells = maze.free_cells
    index = {cell: i for i, cell in enumerate(cells)}
    neighbours = [
        [index[(r + dr, c + dc)] if (r + dr, c + dc) in index else i for dr, dc in _MOVES]
        for i, (r, c) in enumerate(cells)
    ]
    nbr = np.array(neighbours)  # (n_cells, 4), blocked moves stay put
    goal = index[goal_cell]
    reward = np.zeros(len(cells))
    reward[goal] = 1.0
    value = np.zeros(len(cells))
    # Enough sweeps to reach every cell even in mazes larger than the default ones.
    for _ in range(max(sweeps, len(cells))):
        q = reward[:, None] + gamma * value[nbr]
        q[goal] = 1.0 / (1.0 - gamma)  # absorbing goal
        value = q.max(axis=1)
    unreachable = [cells[i] for i in range(len(cells)) if value[i] <= 0.0]
    if unreachable:
        raise ValueError(f"maze {maze.name!r}: cells {unreachable} cannot reach goal cell {goal_cell}")
    q = gamma * value[nbr]
    best = q.argmax(axis=1)
    table = {cells[i]: cells[nbr[i, best[i]]] for i in range(len(cells))}
    table[goal_cell] = goal_cell
    return table


class WaypointController:
    """Follows cell-centre waypoints to a continuous goal with a PD law.

    jitter > 0 moves each waypoint uniformly within +-jitter of its cell centre (drawn from `rng`
    at every plan): routes then cover whole cells instead of a lattice of centre lines.
    """

    def __init__(self, maze: Maze, p_gain: float = 10.0, d_gain: float = 1.0, gamma: float = 0.99,
                 sweeps: int = 50, waypoint_radius: float = 0.1, jitter: float = 0.0,
                 rng: np.random.Generator | None = None):
        if jitter > 0 and rng is None:
            raise ValueError("waypoint jitter needs an rng")
        self.maze = maze
        self.jitter, self.rng = jitter, rng
        self.p_gain, self.d_gain = p_gain, d_gain
        self.gamma, self.sweeps = gamma, sweeps
        self.waypoint_radius = waypoint_radius
        self._tables: dict[tuple[int, int], dict] = {}
        self._goal_xy = (0.0, 0.0)
        self._goal_cell = (0, 0)
        self._waypoints: list[tuple[float, float]] = []
        self._waypoint_cells: list[tuple[int, int]] = []
        self._origin = (0, 0)
        self._i = 0

    def _table(self, goal_cell):
        if goal_cell not in self._tables:
            self._tables[goal_cell] = next_cell_table(self.maze, goal_cell, self.gamma, self.sweeps)
        return self._tables[goal_cell]

    def set_goal(self, goal_xy, pos) -> None:
        self._goal_xy = (float(goal_xy[0]), float(goal_xy[1]))
        self._goal_cell = self.maze.cell_of_xy(self._goal_xy)
        self._plan(self.maze.cell_of_xy(pos))

    def _plan(self, cell) -> None:
        table = self._table(self._goal_cell)
        self._origin = cell
        cells = []
        while cell != self._goal_cell:
            cell = table[cell]
            cells.append(cell)
        centres = [tuple(self.maze.rowcol_to_xy(c)) for c in cells[:-1]]
        if self.jitter > 0 and centres:
            offsets = self.rng.uniform(-self.jitter, self.jitter, size=(len(centres), 2))
            centres = [(x + dx, y + dy) for (x, y), (dx, dy) in zip(centres, offsets.tolist())]
        self._waypoints = centres + [self._goal_xy]
        self._waypoint_cells = cells[:-1] + [self._goal_cell]
        self._i = 0

    def action(self, pos, vel) -> tuple[float, float]:
        """Unclipped PD action towards the current waypoint."""
        x, y = float(pos[0]), float(pos[1])
        cell = self.maze.cell_of_xy((x, y))
        last = len(self._waypoints) - 1
        # Knocked off the route (action noise): plan again from where the ball is.
        previous = self._waypoint_cells[self._i - 1] if self._i > 0 else self._origin
        if cell != self._waypoint_cells[self._i] and cell != previous:
            self._plan(cell)
            last = len(self._waypoints) - 1
        wx, wy = self._waypoints[self._i]
        if self._i < last and math.hypot(wx - x, wy - y) < self.waypoint_radius:
            self._i += 1
            wx, wy = self._waypoints[self._i]
        return (self.p_gain * (wx - x) - self.d_gain * float(vel[0]),
                self.p_gain * (wy - y) - self.d_gain * float(vel[1]))
