"""Maze2D evaluation (docs/method.md, Evaluation) on real held-out windows, with known rewards instead of a model.

The true reward (minus the distance to the goal) must pass the goal-recovery rule for
every default goal; rewards that know nothing about the goal must not. Windows are
short (16 steps) and half of each small dataset is held out, so coverage is dense
enough for every cell near a goal to have 5+ visits.
"""

import math

import matplotlib.image as mpimg
import numpy as np
import pytest

from rrf_ray.data.windows import load_windows
from rrf_ray.maze2d.datasets import generate_maze2d
from rrf_ray.maze2d.evaluation import TrialMetrics, evaluate_reward, true_maze_return
from rrf_ray.maze2d.goal_recovery import find_peak, recover_goal
from rrf_ray.maze2d.heatmap import Heatmap, plot_heatmap, reward_heatmap
from rrf_ray.maze2d.mazes import DEFAULT_LAYOUTS, Maze
from rrf_ray.maze2d.spec import DataSpec
from rrf_ray.metrics.discriminability import discriminability
from rrf_ray.metrics.erc import erc
from rrf_ray.metrics.intervals import format_rate, rate_with_interval

MAZES = list(DEFAULT_LAYOUTS)
HORIZON, STRIDE = 16, 1
SPEC = DataSpec(chunk_transitions=5000, heldout_fraction=0.5)
EXPERT_GOAL = 3


@pytest.fixture(scope="module")
def data(ray_local, tmp_path_factory):
    """Per maze: the held-out base windows and their xy positions (N, H, 2); plus umaze expert windows."""
    root = tmp_path_factory.mktemp("minari-eval")
    out = {}
    for name in MAZES:
        maze = Maze.default(name)
        did = generate_maze2d(maze, None, 50_000, seed=0, data=SPEC, root=root, progress=False)
        w = load_windows(did, HORIZON, STRIDE, split="heldout", root=root)
        pos = w.normalizer.unnormalize(w.batch(np.arange(len(w))))[..., w.action_dim:w.action_dim + 2]
        out[name] = (maze, w, pos)
    umaze, base, _ = out["umaze"]
    did = generate_maze2d(umaze, EXPERT_GOAL, 5000, seed=0, data=SPEC, root=root, progress=False)
    out["expert"] = load_windows(did, HORIZON, STRIDE, split="heldout", root=root, normalizer=base.normalizer)
    return out


def _all_goals(data):
    for name in MAZES:
        maze, _, pos = data[name]
        for k in range(1, len(maze.goals) + 1):
            yield maze, k, pos


def test_true_reward_recovers_every_default_goal(data):
    results = []
    for maze, k, pos in _all_goals(data):
        goal = maze.goal_xy(k)
        rec = recover_goal(reward_heatmap(maze, pos, true_maze_return(pos, goal)), goal)
        results.append((maze.name, k, rec.success, rec.distance))
    failures = [r for r in results if not r[2]]
    assert len(results) == 32
    assert not failures, f"true reward not recovered for {failures}"


def test_random_and_constant_rewards_are_not_recovered(data):
    rng = np.random.default_rng(0)
    random_successes = 0
    for maze, k, pos in _all_goals(data):
        goal = maze.goal_xy(k)
        random_successes += recover_goal(reward_heatmap(maze, pos, rng.normal(size=len(pos))), goal).success
        # A constant reward ties everywhere: a flat map has no peak and is never a success.
        flat = reward_heatmap(maze, pos, np.full(len(pos), 3.7))
        assert find_peak(flat) is None
        rec = recover_goal(flat, goal)
        assert not rec.success and math.isnan(rec.distance) and np.all(np.isnan(rec.peak_xy))
    assert random_successes <= 12


def test_heatmap_counts_a_window_once_per_cell_and_masks_sparse_cells():
    maze = Maze.default("open")
    a, b, c = (-1.95, 0.05), (0.05, 0.05), (1.05, -0.95)  # points inside three distinct 0.1 cells
    windows, rewards = [], []
    windows.append([a] * 4)  # window 0 sits in cell a for all 4 steps...
    rewards.append(10.0)
    for _ in range(4):  # ...windows 1-4 pass through a once and spend 3 steps in c
        windows.append([a, c, c, c])
        rewards.append(0.0)
    for _ in range(4):  # cell b: only 4 windows, below min_visits
        windows.append([b] * 4)
        rewards.append(1.0)
    hm = reward_heatmap(maze, np.array(windows), np.array(rewards), winsor=0.0)
    assert hm.mean.shape == (50, 70) and hm.x_edges.shape == (71,) and hm.y_edges.shape == (51,)
    assert hm.x_edges[0] == -3.5 and hm.x_edges[-1] == 3.5 and hm.y_edges[0] == -2.5 and hm.y_edges[-1] == 2.5

    def cell(p):
        return int(np.searchsorted(hm.y_edges, p[1]) - 1), int(np.searchsorted(hm.x_edges, p[0]) - 1)

    assert hm.counts[cell(a)] == 5  # 5 windows, not 8 steps
    assert hm.mean[cell(a)] == pytest.approx(10.0 / 5)  # window mean, not step-weighted (40/8)
    assert hm.counts[cell(b)] == 4 and np.isnan(hm.mean[cell(b)])
    assert hm.counts[cell(c)] == 4 and np.isnan(hm.mean[cell(c)])
    assert hm.counts.sum() == 5 + 4 + 4
    assert np.isnan(hm.mean).sum() == hm.mean.size - 1


def test_heatmap_winsorises_and_round_trips(tmp_path):
    maze = Maze.default("umaze")
    rng = np.random.default_rng(1)
    pos = np.repeat(rng.uniform(-0.45, 0.45, size=(1000, 1, 2)), 3, axis=1)
    rewards = rng.normal(size=1000)
    rewards[0] = 1e9  # one wild window cannot dominate its cells
    hm = reward_heatmap(maze, pos, rewards)
    assert np.nanmax(hm.mean) < 10
    hm.to_npz(tmp_path / "h.npz")
    back = Heatmap.from_npz(tmp_path / "h.npz")
    np.testing.assert_array_equal(back.mean, hm.mean)
    np.testing.assert_array_equal(back.counts, hm.counts)
    np.testing.assert_array_equal(back.x_edges, hm.x_edges)
    plot_heatmap(hm, maze, maze.goal_xy(5), peak_xy=(0.1, 0.1), path=tmp_path / "h.png", title="umaze")
    img = mpimg.imread(tmp_path / "h.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_rate_with_interval_is_wilson_and_counts_failures():
    # Wilson's 95% interval for 2/4: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    z, n, p = 1.959963984540054, 4, 0.5
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert rate_with_interval([True, True, False, False]) == pytest.approx((0.5, centre - half, centre + half))
    rate, low, high = rate_with_interval([True] * 16)  # 16/16 is not "100% ± 0"
    assert rate == 1.0 and high == pytest.approx(1.0) and low < 0.85
    assert format_rate([True] * 16).startswith("100.00% (95% Wilson 80.6–100.0%; 16/16)")
    assert rate_with_interval([True] * 15, failures=1)[0] == 15 / 16  # a failed trial is in the denominator
    assert format_rate([True] * 15, failures=1).endswith("15/16)")
    assert all(math.isnan(v) for v in rate_with_interval([]))


def test_discriminability_separating_and_random():
    rng = np.random.default_rng(0)
    base, expert = rng.uniform(0, 1, 5000), rng.uniform(2, 3, 3000)  # unbalanced on purpose
    assert discriminability(base, expert, seed=0) == (1.0, 1.0)
    assert discriminability(-base, -expert, seed=0) == (1.0, 1.0)  # lower reward for experts still separates
    acc, auc = discriminability(rng.normal(size=4000), rng.normal(size=4000), seed=1)
    assert abs(acc - 0.5) < 0.1 and abs(auc - 0.5) < 0.1
    acc, auc = discriminability(np.zeros(100), np.zeros(100))
    assert acc == 0.5 and auc == 0.5
    with pytest.raises(ValueError):
        discriminability([1.0], [2.0, 3.0])


def test_erc_of_true_reward_and_its_negation(data):
    maze, _, pos = data["medium"]
    true = true_maze_return(pos, maze.goal_xy(4))
    assert erc(true, true) == pytest.approx(0.0, abs=1e-6)
    assert erc(3 * true + 2, true) == pytest.approx(0.0, abs=1e-6)  # returns only matter up to affine maps
    assert erc(-true, true) == pytest.approx(1.0, abs=1e-6)
    assert erc(np.random.default_rng(0).normal(size=len(true)), true) == pytest.approx(math.sqrt(0.5), abs=0.05)
    assert math.isnan(erc(np.ones(10), np.arange(10)))


def test_evaluate_reward_writes_heatmap_and_metrics(data, tmp_path):
    maze, base, _ = data["umaze"]
    expert = data["expert"]
    goal = maze.goal_xy(EXPERT_GOAL)
    seen_batches = []

    def true_reward(x):
        assert x.dtype == np.float32 and x.ndim == 3
        seen_batches.append(len(x))
        xy = base.normalizer.unnormalize(x)[..., base.action_dim:base.action_dim + 2]
        return true_maze_return(xy, goal)

    m = evaluate_reward(true_reward, maze, EXPERT_GOAL, base, expert, tmp_path / "trial",
                        max_windows=6000, seed=0, batch_size=2048)
    assert isinstance(m, TrialMetrics)
    assert m.goal_recovered and m.goal_distance <= 0.75
    assert np.hypot(m.peak_x - goal[0], m.peak_y - goal[1]) == pytest.approx(m.goal_distance)
    assert m.n_base_windows == min(6000, len(base)) and m.n_expert_windows == min(6000, len(expert))
    assert max(seen_batches) <= 2048
    assert m.erc == pytest.approx(0.0, abs=1e-5)
    # 16-step expert windows are mostly en route, spread over the U like base windows, so the
    # true reward need not separate them; only check the numbers are sane and reproducible.
    assert 0.0 <= m.accuracy <= 1.0 and 0.0 <= m.roc_auc <= 1.0
    again = evaluate_reward(true_reward, maze, EXPERT_GOAL, base, expert, tmp_path / "again",
                            max_windows=6000, seed=0, batch_size=4096)
    assert again.as_dict() == m.as_dict()
    d = m.as_dict()
    assert type(d["goal_recovered"]) is bool and all(type(d[k]) is float for k in ("accuracy", "roc_auc", "erc"))
    assert math.isnan(m.epic) and math.isnan(m.starc)  # not declared a reward of one state: ERC only
    # A reward of one state: EPIC/STARC against -distance-to-goal per step, ~0 for the truth (any positive
    # scale), ~1 for its negation, in between for the distance to another goal
    for scale, expected in ((3.0, 0.0), (-1.0, 1.0)):
        e = evaluate_reward(lambda x: scale * true_reward(x), maze, EXPERT_GOAL, base, expert, tmp_path / "epic",
                            max_windows=6000, seed=0, state_reward=True)
        assert e.epic == pytest.approx(expected, abs=1e-6) and e.starc == pytest.approx(expected, abs=1e-6)
        assert e.epic_low <= e.epic <= e.epic_high
    other = maze.goal_xy(1)
    elsewhere = evaluate_reward(lambda x: true_maze_return(
        base.normalizer.unnormalize(x)[..., base.action_dim:base.action_dim + 2], other), maze, EXPERT_GOAL, base,
        expert, tmp_path / "elsewhere", max_windows=6000, seed=0, state_reward=True)
    assert 0.05 < elsewhere.epic < 0.95 and elsewhere.epic_low < elsewhere.epic < elsewhere.epic_high
    hm = Heatmap.from_npz(tmp_path / "trial" / "heatmap.npz")
    assert hm.mean.shape == (50, 50)
    img = mpimg.imread(tmp_path / "trial" / "heatmap.png")
    assert img.shape[0] > 100 and img.shape[1] > 100


@pytest.mark.slow
def test_true_reward_recovers_random_goals_in_every_maze(ray_local, tmp_path):
    """The success rule (docs/method.md, Evaluation: sigma 0.25, radius 0.75) is never the limit: rho = -distance
    to the goal, scored on held-out windows of real base data (D4RL controller, continuous stream,
    the smoke profile's 4-row evaluation windows), recovers >= 95% of 64 random goals per maze."""
    from rrf_ray.maze2d.evaluation import score_windows
    from rrf_ray.maze2d.mazes import random_goals

    data = DataSpec(chunk_transitions=5000, base_split_at_goals=False, heldout_fraction=0.5)
    sizes = {"open": 30_000, "umaze": 30_000, "medium": 60_000, "large": 90_000}
    for name, n in sizes.items():
        maze = Maze.default(name)
        did = generate_maze2d(maze, None, n, seed=0, data=data, root=tmp_path, progress=False)
        held = load_windows(did, 4, 8, split="heldout", root=tmp_path, pad_end=True)
        _, positions = score_windows(lambda x: np.zeros(len(x)), held, np.arange(len(held)), 8192, True)
        misses = []
        for goal in random_goals(maze.layout, 64, seed=11):
            goal_xy = maze.rowcol_to_xy(goal)
            rec = recover_goal(reward_heatmap(maze, positions, true_maze_return(positions, goal_xy)), goal_xy)
            if not rec.success:
                misses.append((goal, round(rec.distance, 2)))
        assert len(misses) <= 3, f"{name}: rho = -distance missed {len(misses)}/64 goals: {misses}"
