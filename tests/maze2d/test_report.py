"""Sweep report from a directory of trial results: paper numbers, our rates, failures, figures.

Trial results are made with the real evaluation code (evaluate_reward) on synthetic
windows, so heatmap.npz / metrics are exactly what a sweep would write.
"""

import csv
import json
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest

from rrf_ray.data.windows import TrajectoryWindows
from rrf_ray.maze2d.evaluation import evaluate_reward, true_maze_return
from rrf_ray.maze2d.mazes import Maze
from rrf_ray.engine.cli import report_main
from rrf_ray.maze2d.report import write_report
from rrf_ray.metrics.intervals import format_rate

CUSTOM = {"layout": ["#####", "#OOO#", "#####"], "goals": [[1, 3]]}


def synthetic_windows(maze: Maze, rng, n: int, horizon: int = 6, near=None) -> TrajectoryWindows:
    """Short random walks inside free cells, as unnormalised [ax, ay, x, y, vx, vy] windows."""
    cells = np.array(maze.free_cells)
    rc = cells[rng.integers(len(cells), size=n)] + rng.uniform(-0.4, 0.4, size=(n, 2))
    start = maze.rowcol_to_xy(rc) if near is None else near + rng.normal(0, 0.15, size=(n, 2))
    steps = np.cumsum(rng.normal(0, 0.03, size=(n, horizon, 2)), axis=1)
    windows = np.zeros((n, horizon, 6), dtype=np.float32)
    windows[..., 2:4] = start[:, None, :] + steps
    return TrajectoryWindows.from_array(windows, action_dim=2)


def make_trial(sweep, maze: Maze, goal: int, seed: int) -> dict:
    tid = f"{maze.name}-goal{goal}-seed{seed}"
    rng = np.random.default_rng([goal, seed])
    goal_xy = maze.goal_xy(goal)
    base = synthetic_windows(maze, rng, 3000)
    expert = synthetic_windows(maze, rng, 500, near=goal_xy)

    def reward(x):  # a noisy true reward; noise grows with the seed so some trials miss
        return true_maze_return(x[..., 2:4], goal_xy) + rng.normal(0, 0.5 * seed, size=len(x))

    out = sweep / "trials" / tid
    metrics = evaluate_reward(reward, maze, goal, base, expert, out, seed=seed)
    result = {"trial_id": tid, "maze": maze.name, "goal": goal, "seed": seed, "status": "ok", "error": None,
              "metrics": metrics.as_dict()}
    (out / "result.json").write_text(json.dumps(result))
    return result


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sweep")
    expected, ok = [], []
    for name in ("umaze", "open"):
        maze = Maze.default(name)
        for goal in (1, 2):
            for seed in (0, 1):
                tid = f"{name}-goal{goal}-seed{seed}"
                expected.append({"trial_id": tid, "maze": name, "goal": goal, "seed": seed})
                if tid == "open-goal2-seed1":  # failed
                    (sweep / "trials" / tid).mkdir(parents=True)
                    (sweep / "trials" / tid / "result.json").write_text(json.dumps({
                        "trial_id": tid, "maze": name, "goal": goal, "seed": seed, "status": "failed",
                        "error": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory",
                        "metrics": None}))
                elif tid == "umaze-goal2-seed1":  # missing: never wrote a result
                    pass
                else:
                    ok.append(make_trial(sweep, maze, goal, seed))
    custom = Maze("corridor", tuple(CUSTOM["layout"]), tuple(tuple(g) for g in CUSTOM["goals"]))
    expected.append({"trial_id": "corridor-goal1-seed0", "maze": "corridor", "goal": 1, "seed": 0, **CUSTOM})
    ok.append(make_trial(sweep, custom, 1, 0))
    (sweep / "trials.json").write_text(json.dumps(expected))
    report = write_report(sweep)
    return sweep, expected, ok, report


def test_report_has_paper_numbers_and_ours(sweep):
    sweep_dir, expected, ok, report = sweep
    text = report.read_text()
    for paper in ("78.75% ± 8.96", "77.50% ± 9.15", "78.12% ± 6.40", "83.76%", "84.49%", "65.33–97.26%"):
        assert paper in text
    assert f"{len(ok)} of {len(expected)} expected trials completed (1 failed, 1 missing)" in text

    def rate(results, failed=0):
        return format_rate([r["metrics"]["goal_recovered"] for r in results], failed)

    # all, including the custom maze; the failed trial (open) counts as a goal not recovered
    assert f"| goal recovery, all | 78.12% ± 6.40 | {rate(ok, failed=1)}, 1 failed |" in text
    assert rate([r for r in ok if r["maze"] in ("open", "umaze")], failed=1) in text
    assert f"/{len(ok) + 1})" in text and "Wilson" in text
    assert "mazes here: none" in text  # no medium/large trials in this sweep
    accuracy = np.array([r["metrics"]["accuracy"] for r in ok])
    assert f"{100 * accuracy.mean():.2f}%" in text and f"{100 * np.median(accuracy):.2f}%" in text
    for name in ("umaze", "open", "corridor"):
        assert f"](figures/{name}.png)" in text
        assert f"| {name} |" in text


def test_failed_and_missing_trials_are_listed(sweep):
    sweep_dir, expected, ok, report = sweep
    text = report.read_text()
    failed_section = text.split("## Failed trials")[1].split("## Missing trials")[0]
    missing_section = text.split("## Missing trials")[1]
    assert "`open-goal2-seed1`" in failed_section and "RuntimeError: CUDA out of memory" in failed_section
    assert "`umaze-goal2-seed1`" in missing_section and "open-goal2-seed1" not in missing_section


def test_results_csv_has_one_row_per_expected_trial(sweep):
    sweep_dir, expected, ok, _ = sweep
    with open(sweep_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == [e["trial_id"] for e in expected]
    status = {r["trial_id"]: r["status"] for r in rows}
    assert status.pop("open-goal2-seed1") == "failed" and status.pop("umaze-goal2-seed1") == "missing"
    assert set(status.values()) == {"ok"}
    by_id = {r["trial_id"]: r for r in rows}
    for r in ok:
        assert float(by_id[r["trial_id"]]["accuracy"]) == pytest.approx(r["metrics"]["accuracy"])
    assert "CUDA out of memory" in by_id["open-goal2-seed1"]["error"]
    assert by_id["umaze-goal2-seed1"]["accuracy"] == ""


def test_figures_decode_as_pngs(sweep):
    sweep_dir, *_ = sweep
    for name, (rows, cols) in {"umaze": (2, 2), "open": (2, 2), "corridor": (1, 1)}.items():
        img = mpimg.imread(sweep_dir / "figures" / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] >= 100 * rows and img.shape[1] >= 150 * cols
    assert not list(sweep_dir.rglob(".*tmp*"))


def test_report_rerenders_and_cli(sweep, tmp_path):
    sweep_dir, *_ = sweep
    assert report_main([str(sweep_dir)]) == 0  # re-running over an existing report is fine
    proc = subprocess.run([sys.executable, "-m", "rrf_ray.report", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "trials.json" in proc.stderr


def test_report_names_the_recipe_from_spec_json(sweep):
    """The profiles differ from the paper in how triples and experts are made; the report says how."""
    from rrf_ray.engine.loading import load_spec

    sweep_dir, *_ = sweep
    assert "Recipe" not in (sweep_dir / "report.md").read_text()  # no spec.json: nothing claimed
    smoke = load_spec("maze2d-smoke")
    (sweep_dir / "spec.json").write_text(smoke.model_dump_json())
    text = write_report(sweep_dir).read_text()
    assert "triples by Algorithm 1: 20,000 noised mixed dataset windows, grad rho at base_mean" in text
    assert f"experts fine-tuned from the base for {smoke.expert.train_steps:,} steps" in text
    (sweep_dir / "spec.json").write_text(load_spec("maze2d").model_dump_json())
    text = write_report(sweep_dir).read_text()
    assert "triples by Algorithm 2: 512 pre-generated chains per model" in text
    assert "experts trained from scratch for 500,000 steps" in text


def test_figures_and_tables_use_the_goals_the_spec_ran(tmp_path):
    """Goals moved by the spec (here drawn at random): the star is drawn where the trial's goal was,
    not at the built-in goal of that index, and results.csv / report.md give the drawn positions."""
    from rrf_ray.engine.loading import load_spec
    from rrf_ray.maze2d.report import load_trials, maze_figure, read_sweep_spec, spec_mazes

    spec = load_spec("maze2d-smoke", ["mazes.umaze.goals={random: 2, seed: 7}"])
    moved = spec.maze("umaze")
    assert moved.goals[1] != Maze.default("umaze").goals[1]
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    (tmp_path / "trials.json").write_text(json.dumps([{"trial_id": "umaze-goal2-seed0", "maze": "umaze",
                                                       "goal": 2, "seed": 0}]))
    make_trial(tmp_path, moved, 2, 0)
    report = write_report(tmp_path).read_text()
    fig = maze_figure(tmp_path, "umaze", load_trials(tmp_path), spec_mazes(read_sweep_spec(tmp_path))["umaze"])
    stars = [line for ax in fig.axes for line in ax.lines if line.get_marker() == "*"]
    assert len(stars) == 1
    np.testing.assert_allclose([stars[0].get_xdata()[0], stars[0].get_ydata()[0]], moved.goal_xy(2))
    row, col = moved.goal(2)
    assert f"| umaze-goal2-seed0 | ({row:g}, {col:g}) |" in report
    assert "Goals of umaze drawn uniformly inside free cells: 2 with seed 7" in report
    with open(tmp_path / "results.csv", newline="") as f:
        (csv_row,) = list(csv.DictReader(f))
    assert (float(csv_row["goal_row"]), float(csv_row["goal_col"])) == (row, col)


def test_a_non_finite_metric_is_counted_not_silently_dropped(sweep, tmp_path):
    """A trial whose ERC came out NaN still counts for recovery; the report says its ERC was left out."""
    import shutil

    sweep_dir = tmp_path / "nan"
    shutil.copytree(sweep[0], sweep_dir)
    path = sweep_dir / "trials" / "umaze-goal1-seed0" / "result.json"
    result = json.loads(path.read_text())
    result["metrics"]["erc"] = float("nan")
    path.write_text(json.dumps(result))
    text = write_report(sweep_dir).read_text()
    assert "left out of the means above: erc in 1 trial(s)" in text
    assert "left out of the means above" not in sweep[3].read_text()  # the untouched sweep has none


def test_protocol_card_and_rates_per_seed_with_rliable(sweep):
    sweep_dir, expected, ok, report = sweep
    text = report.read_text()
    assert "## Protocol" in text and "Selected on what" in text and "Wilson" in text
    section = text.split("## Across seeds")[1].split("## Per maze")[0]
    header = next(line for line in section.splitlines() if line.startswith("| run |")).split("|")
    seed1 = next(line for line in section.splitlines() if line.startswith("| seed 1 |")).split("|")
    # seed 1: open goal 1 ok, open goal 2 failed (counted, not recovered); umaze goal 2 missing (not scored)
    assert seed1[header.index(" open ")].strip().endswith("/2), 1 failed")
    assert seed1[header.index(" umaze ")].strip().endswith("1/1)")
    assert "Interquartile mean over runs" in section and "rliable" in section


def test_sweeps_of_different_data_seeds_pool_into_one_report(sweep, tmp_path):
    import shutil

    sweep_dir = sweep[0]
    copies = []
    for name in ("draw-a", "draw-b"):
        copies.append(tmp_path / name / "maze2d")
        shutil.copytree(sweep_dir, copies[-1])
    out = tmp_path / "pooled.md"
    r = subprocess.run([sys.executable, "-m", "rrf_ray.maze2d.report", "--pool", str(out), *map(str, copies)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    ok = [t for t in sweep[2] if t["maze"] in ("umaze", "open", "corridor")]
    recovered = sum(bool(t["metrics"]["goal_recovered"]) for t in ok)
    assert f"Pooled over the 2 runs: " in text and f"{2 * recovered}/{2 * (len(ok) + 1)})" in text  # + the failed one
    assert "| draw-a/maze2d |" in text and "| draw-b/maze2d |" in text
    r = subprocess.run([sys.executable, "-m", "rrf_ray.maze2d.report", "--pool", str(out), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "trials.json" in r.stderr
