"""Sweep report: our Maze2D numbers beside the paper's, from whatever trials finished.

A sweep directory holds the list of expected trials and one result per trial that ran.
The report is rebuilt from those files alone, so it can be made while a sweep is still
running or after it died half-way; trials that failed or never wrote a result are
listed, not silently dropped, and every rate says how many trials it is over.

    SWEEP_DIR/trials.json                      [{"trial_id", "maze", "goal", "seed"}, ...]
    SWEEP_DIR/trials/<trial_id>/result.json    {"trial_id", "maze", "goal", "seed", "status",
                                                "error", "metrics"}
    SWEEP_DIR/trials/<trial_id>/heatmap.npz    (ok trials)

A trials.json entry may also carry "layout" and "goals" for a maze that is not built in,
so its figure shows walls and the goal; without them such a maze is drawn bare.

Rebuilt by `python -m rrf_ray.report SWEEP_DIR` (report.md, results.csv, figures/<maze>.png); several
sweeps of one recipe (e.g. one per data seed) pooled by `python -m rrf_ray.maze2d.report --pool OUT DIR...`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rrf_ray.engine.atomic import write_atomic
from rrf_ray.engine.report import save_figure_atomic, write_html_report
from rrf_ray.maze2d.heatmap import Heatmap, plot_heatmap
from rrf_ray.maze2d.mazes import DEFAULT_LAYOUTS, Maze, MazeError
from rrf_ray.metrics.intervals import format_rate

TRIALS_FILE, RESULT_FILE, HEATMAP_FILE = "trials.json", "result.json", "heatmap.npz"
METRIC_FIELDS = ["goal_recovered", "goal_distance", "peak_x", "peak_y", "accuracy", "roc_auc", "erc", "epic",
                 "epic_low", "epic_high", "starc",
                 "n_base_windows", "n_expert_windows", "reward_val_cosine", "reward_val_loss", "reward_cosine"]
PHASE_FIELDS = ["expert_s", "pregen_s", "reward_s", "eval_s"]  # wall-clock seconds per trial phase
CSV_FIELDS = (["trial_id", "maze", "goal", "goal_row", "goal_col", "seed", "status", "error"] + METRIC_FIELDS
              + PHASE_FIELDS)
GROUPS = {"open+umaze": ("open", "umaze"), "medium+large": ("medium", "large")}

# The paper's Maze2D numbers (docs/method.md, Evaluation).
PAPER_RECOVERY = {"open+umaze": "78.75% ± 8.96", "medium+large": "77.50% ± 9.15", "all": "78.12% ± 6.40"}
PAPER_ACCURACY = {"mean": "83.76%", "median": "84.49%", "range": "65.33–97.26%"}
NOT_REPORTED = "—"


class ReportError(ValueError):
    """A sweep directory the report cannot read; the CLI exits 2."""


@dataclass
class Trial:
    trial_id: str
    maze: str
    goal: int
    seed: int
    status: str  # ok | failed | missing
    error: str | None
    metrics: dict | None
    entry: dict  # the trials.json entry

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# -- reading ------------------------------------------------------------------------

def load_trials(sweep_dir) -> list[Trial]:
    """Every expected trial, joined with its result.json if there is one."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / TRIALS_FILE
    if not path.is_file():
        raise ReportError(f"{sweep_dir} has no {TRIALS_FILE}; is it a sweep directory?")
    try:
        expected = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: cannot read the trial list: {e}") from None
    if not isinstance(expected, list):
        raise ReportError(f"{path}: expected a JSON list of trials, got {type(expected).__name__}")
    trials = []
    for i, entry in enumerate(expected):
        try:
            tid, maze, goal, seed = entry["trial_id"], str(entry["maze"]), int(entry["goal"]), int(entry["seed"])
        except (TypeError, KeyError, ValueError) as e:
            raise ReportError(f"{path}: entry {i} needs trial_id, maze, goal and seed ({e!r})") from None
        trials.append(_with_result(sweep_dir, Trial(tid, maze, goal, seed, "missing", None, None, entry)))
    return trials


def _with_result(sweep_dir: Path, trial: Trial) -> Trial:
    path = sweep_dir / "trials" / trial.trial_id / RESULT_FILE
    if not path.is_file():
        return trial
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        trial.status, trial.error = "failed", f"unreadable {RESULT_FILE}: {e}"
        return trial
    status = result.get("status")
    metrics = result.get("metrics")
    if status == "ok" and isinstance(metrics, dict):
        trial.status, trial.metrics = "ok", metrics
    elif status == "ok":
        trial.status, trial.error = "failed", f"{RESULT_FILE} says ok but has no metrics"
    else:
        trial.status = "failed"
        trial.error = result.get("error") or f"status {status!r} without an error message"
    return trial


def maze_of(trial: Trial, spec_mazes: dict[str, Maze] | None = None) -> Maze | None:
    """The trial's maze: the sweep spec's (its goals as run, moved or drawn), else its entry's
    layout/goals, else the built-in table, else unknown."""
    if spec_mazes and trial.maze in spec_mazes:
        return spec_mazes[trial.maze]
    entry = trial.entry
    try:
        if entry.get("layout") is not None and entry.get("goals") is not None:
            return Maze(trial.maze, tuple(entry["layout"]), tuple(tuple(float(v) for v in g) for g in entry["goals"]))
        if trial.maze in DEFAULT_LAYOUTS:
            return Maze.default(trial.maze)
    except (MazeError, TypeError, ValueError):
        return None
    return None


def read_sweep_spec(sweep_dir: Path):
    """The Maze2DSpec in the sweep's spec.json, or None (no file, or another experiment's)."""
    from pydantic import ValidationError

    from rrf_ray.maze2d.spec import Maze2DSpec

    try:
        return Maze2DSpec.model_validate_json((Path(sweep_dir) / "spec.json").read_text())
    except (OSError, ValidationError):
        return None


def spec_mazes(spec) -> dict[str, Maze]:
    """The mazes of a Maze2DSpec (None: none), goals as run."""
    return {name: spec.maze(name) for name in spec.mazes} if spec is not None else {}


# -- numbers ------------------------------------------------------------------------

def _metric(trials: list[Trial], name: str) -> np.ndarray:
    vals = [t.metrics.get(name) for t in trials if t.ok]
    return np.array([float(v) for v in vals if v is not None and math.isfinite(float(v))], dtype=np.float64)


def _fmt_rate(trials: list[Trial]) -> str:
    """Goal recovery over completed and failed trials (a failed trial is a goal not recovered)."""
    done = [t for t in trials if t.ok]
    failed = sum(t.status == "failed" for t in trials)
    if not done and not failed:
        return "no completed trials"
    text = format_rate([bool(t.metrics.get("goal_recovered")) for t in done], failed)
    return text + (f", {failed} failed" if failed else "")


def _nonfinite_lines(trials: list[Trial]) -> list[str]:
    counts = _nonfinite(trials, ["goal_distance", "accuracy", "roc_auc", "erc"])
    if not counts:
        return []
    return ["Missing or non-finite values, left out of the means above: "
            + ", ".join(f"{name} in {n} trial(s)" for name, n in counts.items()) + ".", ""]


def _nonfinite(trials: list[Trial], names: list[str]) -> dict[str, int]:
    """How many completed trials report a missing or non-finite value of each metric (left out of its mean)."""
    counts = {}
    for name in names:
        bad = sum(1 for t in trials if t.ok and not _finite(t.metrics.get(name)))
        if bad:
            counts[name] = bad
    return counts


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%" if math.isfinite(x) else NOT_REPORTED


def _num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else NOT_REPORTED


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _group_trials(trials: list[Trial]) -> dict[str, tuple[list[Trial], list[str]]]:
    """open+umaze, medium+large (only the mazes present) and all: (trials, maze names)."""
    out = {}
    for group, names in GROUPS.items():
        members = [t for t in trials if t.maze in names]
        out[group] = (members, [n for n in names if any(t.maze == n for t in members)])
    out["all"] = (trials, _maze_order(trials))
    return out


def _maze_order(trials: list[Trial]) -> list[str]:
    return list(dict.fromkeys(t.maze for t in trials))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "maze"


# -- writing ------------------------------------------------------------------------

def write_results_csv(trials: list[Trial], path: Path, mazes: dict[str, Maze] | None = None) -> Path:
    """One row per expected trial, with its goal's position as run (maze units)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for t in trials:
        goal_rc = _goal_rowcol(maze_of(t, mazes), t.goal)
        row = {"trial_id": t.trial_id, "maze": t.maze, "goal": t.goal, "goal_row": goal_rc[0], "goal_col": goal_rc[1],
               "seed": t.seed, "status": t.status, "error": t.error or ""}
        for f in METRIC_FIELDS + PHASE_FIELDS:
            row[f] = "" if t.metrics is None or t.metrics.get(f) is None else t.metrics[f]
        writer.writerow(row)
    return write_atomic(path, buf.getvalue())


ONE_SEED_COLUMNS = 4  # maze_figure: goals per row when a sweep has one seed


def write_maze_figure(sweep_dir: Path, maze_name: str, trials: list[Trial], path: Path,
                      maze: Maze | None = None) -> Path:
    """figures/MAZE.png: see maze_figure."""
    return save_figure_atomic(maze_figure(sweep_dir, maze_name, trials, maze), path, dpi=80)


def maze_figure(sweep_dir: Path, maze_name: str, trials: list[Trial], maze: Maze | None = None):
    """Heatmaps of one maze (`maze`: its layout and goals as run, else looked up from the trial):
    goals as rows, seeds as columns; with one seed the goals fill a grid of up to
    ONE_SEED_COLUMNS columns instead of one tall column. Failed/missing panels labelled."""
    from matplotlib.figure import Figure

    goals = sorted({t.goal for t in trials})
    seeds = sorted({t.seed for t in trials})
    by_key = {(t.goal, t.seed): t for t in trials}
    maze = maze if maze is not None else maze_of(trials[0])
    aspect = maze.height / maze.width if maze is not None else 1.0
    # One seed: the goals fill a grid (a one-seed sweep of 8 goals is 2 rows of 4, not a column of 8).
    nrows, ncols = ((-(-len(goals) // ONE_SEED_COLUMNS), min(ONE_SEED_COLUMNS, len(goals))) if len(seeds) == 1
                    else (len(goals), len(seeds)))
    panel_w = 3.2
    fig = Figure(figsize=(panel_w * ncols, (panel_w * aspect + 0.6) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k in range(len(goals) * len(seeds), nrows * ncols):  # the one-seed grid's unfilled last row
        axes[k // ncols][k % ncols].remove()
    for i, goal in enumerate(goals):
        for j, seed in enumerate(seeds):
            ax = axes[i // ncols][i % ncols] if len(seeds) == 1 else axes[i][j]
            trial = by_key.get((goal, seed))
            if trial is None:
                ax.axis("off")
                continue
            heatmap_path = sweep_dir / "trials" / trial.trial_id / HEATMAP_FILE
            label = f"goal {goal}, seed {seed}"
            if trial.ok and heatmap_path.is_file():
                m = trial.metrics
                peak = np.array([m.get("peak_x", np.nan), m.get("peak_y", np.nan)], dtype=np.float64)
                goal_xy = _goal_xy(maze, goal)
                verdict = "recovered" if m.get("goal_recovered") else "not recovered"
                dist = m.get("goal_distance")
                dist_text = f", d={dist:.2f}" if dist is not None and math.isfinite(float(dist)) else ""
                plot_heatmap(Heatmap.from_npz(heatmap_path), maze, goal_xy, peak_xy=peak, ax=ax,
                             title=f"{label}: {verdict}{dist_text}")
            else:
                status = trial.status if not trial.ok else "no heatmap"
                ax.text(0.5, 0.5, status, ha="center", va="center", fontsize=14, color="firebrick",
                        transform=ax.transAxes)
                ax.set_title(label, fontsize=9)
                ax.set_box_aspect(aspect)
                ax.set_xticks([])
                ax.set_yticks([])
    fig.suptitle(f"{maze_name}: learned reward heatmaps (green star = goal, white x = peak)")
    return fig


def _goal_rowcol(maze: Maze | None, goal: int) -> tuple:
    try:
        return maze.goal(goal) if maze is not None else ("", "")
    except MazeError:
        return ("", "")


def _goal_xy(maze: Maze | None, goal: int):
    if maze is None:
        return None
    try:
        return maze.goal_xy(goal)
    except MazeError:
        return None


def render_markdown(trials: list[Trial], figures: dict[str, str], sweep_dir: Path, spec=None) -> str:
    """report.md; `spec`: the sweep's Maze2DSpec from spec.json, if it has one (recipe, goals as run)."""
    done = [t for t in trials if t.ok]
    failed = [t for t in trials if t.status == "failed"]
    missing = [t for t in trials if t.status == "missing"]
    groups = _group_trials(trials)
    acc, auc, erc_vals = _metric(trials, "accuracy"), _metric(trials, "roc_auc"), _metric(trials, "erc")

    lines = [
        f"# Maze2D sweep report: {sweep_dir.name}",
        "",
        f"{len(done)} of {len(trials)} expected trials completed "
        f"({len(failed)} failed, {len(missing)} missing). "
        "Goal recovery counts a failed trial as a goal not recovered, with a 95% Wilson interval (the paper's "
        "figures are p̂ ± 1.96·sqrt(p̂(1−p̂)/n), over completed trials); means are over completed trials with a "
        "finite value, and the values left out are counted below the table.",
        "",
        *protocol_lines(spec),
        *recipe_lines(spec),
        "## Paper vs ours",
        "",
        "| metric | paper | ours |",
        "|---|---|---|",
    ]
    for group, (members, present) in groups.items():
        label = f"goal recovery, {group}"
        if group != "all":
            label += f" (mazes here: {', '.join(present) if present else 'none'})"
        lines.append(f"| {label} | {PAPER_RECOVERY[group]} | {_fmt_rate(members)} |")
    lines += [
        f"| discriminability accuracy, mean | {PAPER_ACCURACY['mean']} | {_pct(_mean(acc))} |",
        f"| discriminability accuracy, median | {PAPER_ACCURACY['median']} | "
        f"{_pct(float(np.median(acc))) if acc.size else NOT_REPORTED} |",
        f"| discriminability accuracy, range | {PAPER_ACCURACY['range']} | "
        f"{f'{_pct(acc.min())}–{_pct(acc.max())}' if acc.size else NOT_REPORTED} |",
        f"| discriminability ROC AUC, mean | {NOT_REPORTED} | {_num(_mean(auc))} |",
        f"| ERC (Pearson distance to −distance-to-goal), mean | {NOT_REPORTED} | {_num(_mean(erc_vals))} |",
        f"| EPIC (to −distance-to-goal per step; blind to shaping), mean | {NOT_REPORTED} | "
        f"{_num(_mean(_metric(trials, 'epic')))} |",
        f"| STARC (likewise), mean | {NOT_REPORTED} | {_num(_mean(_metric(trials, 'starc')))} |",
        f"| reward fit: gradient cosine on held-out episodes' triples, mean | {NOT_REPORTED} | "
        f"{_num(_mean(_metric(trials, 'reward_val_cosine')))} |",
        "",
        *_nonfinite_lines(trials),
        *seed_lines(trials),
        "## Per maze",
        "",
        "| maze | expected | completed | failed | missing | goal recovery | mean peak distance "
        "| accuracy mean | ROC AUC mean | ERC mean | EPIC mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in _maze_order(trials):
        ts = [t for t in trials if t.maze == name]
        lines.append(
            f"| {name} | {len(ts)} | {sum(t.ok for t in ts)} | {sum(t.status == 'failed' for t in ts)} "
            f"| {sum(t.status == 'missing' for t in ts)} | {_fmt_rate(ts)} | {_num(_mean(_metric(ts, 'goal_distance')), 2)} "
            f"| {_pct(_mean(_metric(ts, 'accuracy')))} | {_num(_mean(_metric(ts, 'roc_auc')))} "
            f"| {_num(_mean(_metric(ts, 'erc')))} | {_num(_mean(_metric(ts, 'epic')))} |"
        )
    lines += per_goal_lines(trials, spec)
    layout = ("one panel per goal" if len({t.seed for t in trials}) == 1 else "rows are goals, columns seeds")
    lines += ["", "## Heatmaps", "",
              f"{layout.capitalize()}, titled with its goal and seed; green star = true goal, white x = learned peak.", ""]
    for name, rel in figures.items():
        lines += [f"### {name}", "", f"![{name} heatmaps]({rel})", ""]
    lines += ["## Failed trials", ""]
    if failed:
        for t in failed:
            lines.append(f"- `{t.trial_id}` (maze {t.maze}, goal {t.goal}, seed {t.seed}): {_one_line(t.error)}")
    else:
        lines.append("None.")
    lines += ["", "## Missing trials", ""]
    if missing:
        lines.append("Expected but no result.json was written:")
        lines.append("")
        for t in missing:
            lines.append(f"- `{t.trial_id}` (maze {t.maze}, goal {t.goal}, seed {t.seed})")
    else:
        lines.append("None.")
    lines += ["", "Full per-trial numbers and errors: [results.csv](results.csv).", ""]
    return "\n".join(lines)


def per_goal_lines(trials: list[Trial], spec) -> list[str]:
    """Every trial's goal position (as run: moved or drawn goals included), verdict and peak distance."""
    mazes = spec_mazes(spec)
    lines = ["", "## Per goal", ""]
    if spec is not None:
        for name, m in spec.mazes.items():
            if m.random_goals is not None:
                r = m.random_goals
                lines.append(f"Goals of {name} drawn uniformly inside free cells: {r.random} with seed {r.seed} "
                             f"(margin {r.margin}).")
        if lines[-1]:
            lines.append("")
    lines += ["| trial | goal (row, col) | recovered | peak distance | accuracy | ERC | EPIC [95% CI] |",
              "|---|---|---|---|---|---|---|"]
    for t in trials:
        rc = _goal_rowcol(maze_of(t, mazes), t.goal)
        where = f"({rc[0]:g}, {rc[1]:g})" if rc[0] != "" else NOT_REPORTED
        if not t.ok:
            lines.append(f"| {t.trial_id} | {where} | {t.status} | {NOT_REPORTED} | {NOT_REPORTED} | {NOT_REPORTED} "
                         f"| {NOT_REPORTED} |")
            continue
        m = t.metrics
        lines.append(f"| {t.trial_id} | {where} | {'yes' if m.get('goal_recovered') else 'no'} "
                     f"| {_num(float(m.get('goal_distance', math.nan)), 2)} | {_pct(float(m.get('accuracy', math.nan)))} "
                     f"| {_num(float(m.get('erc', math.nan)))} | {_epic_cell(m)} |")
    return lines


def _epic_cell(m: dict) -> str:
    e = float(m.get("epic", math.nan))
    if not math.isfinite(e):
        return NOT_REPORTED
    lo, hi = float(m.get("epic_low", math.nan)), float(m.get("epic_high", math.nan))
    return f"{e:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else f"{e:.3f}"


def protocol_lines(spec) -> list[str]:
    """The protocol card: what was chosen on what, seeds, what is scored, intervals, differences from the paper."""
    goals = "the goals listed in the spec"
    if spec is not None:
        drawn = [f"{name}: {m.random_goals.random} drawn with seed {m.random_goals.seed}"
                 for name, m in spec.mazes.items() if m.random_goals is not None]
        fixed = [name for name, m in spec.mazes.items() if m.random_goals is None]
        goals = "; ".join(drawn + ([f"{', '.join(fixed)}: fixed goals from the spec"] if fixed else []))
    seeds = ("(spec.json missing: seeds unknown)" if spec is None else
             f"data seed {spec.data_seed} (every generated dataset); model seeds {spec.seeds} (expert diffuser, "
             f"triples and reward of each trial; the base diffuser "
             + ("per seed" if spec.base_per_seed else f"one per maze, seeded by {spec.seeds[0]}") + ")")
    return ["## Protocol", "",
            "- **Selected on what:** nothing is tuned in this sweep; the profile's settings were fixed beforehand "
            "(the YAML's header says on which goals). Goals: " + goals + ". Judge a recipe on goals drawn after "
            "it was fixed (`--set mazes.NAME.goals='{random: N, seed: S}'`).",
            "- **Seeds:** " + seeds + ". A seed that varies data too is a separate sweep with its own "
            "`data_seed`; `python -m rrf_ray.maze2d.report --pool OUT DIR...` pools such sweeps.",
            "- **Scored on:** held-out episodes' windows only (never a training window); no rollouts: the reward "
            "is read as a heatmap. A goal is recovered when the smoothed heatmap's peak lies within 0.75 maze "
            "units of it (docs/method.md, Evaluation); discriminability is a 1-D logistic regression fit on one "
            "held-out half "
            "and scored on the other; ERC against −distance-to-goal; for a reward of the position alone, EPIC and "
            "STARC against −distance-to-goal per step (canonicalised at γ = 1 over one transition of each of up to "
            "2,000 held-out base windows, 95% BCa interval per trial), which unlike ERC do not see potential "
            "shaping.",
            "- **Intervals:** goal recovery with a 95% Wilson interval, a failed trial counted as a goal not "
            "recovered; across seeds, rliable's interquartile mean of per-seed rates with a stratified-bootstrap "
            "interval.",
            "- **Differs from the paper:** the recipe below (sizes and training lengths) against the paper's "
            "(docs/method.md); the paper's ± is p̂ ± 1.96·sqrt(p̂(1−p̂)/n) over completed trials only.", ""]


def seed_lines(trials: list[Trial]) -> list[str]:
    """With several model seeds: each seed's recovery rate, and rliable's IQM over seeds (mazes as tasks)."""
    seeds = sorted({t.seed for t in trials})
    if len(seeds) < 2:
        return []
    return ["## Across seeds", ""] + rate_table(
        {f"seed {s}": [t for t in trials if t.seed == s] for s in seeds}) + [""]


def rate_table(runs: dict[str, list[Trial]]) -> list[str]:
    """One row per run (its recovery rate per maze and overall), then the interquartile mean over runs of
    the per-maze rates with rliable's stratified-bootstrap interval. A failed trial counts as not recovered."""
    from rrf_ray.metrics.aggregate import iqm

    mazes = list(dict.fromkeys(t.maze for ts in runs.values() for t in ts))
    lines = ["| run | " + " | ".join(mazes) + " | all |", "|---" * (len(mazes) + 2) + "|"]
    matrix = []
    for name, ts in runs.items():
        row = []
        for m in mazes:
            scored = [t for t in ts if t.maze == m and t.status != "missing"]
            row.append(np.mean([t.ok and bool(t.metrics.get("goal_recovered")) for t in scored])
                       if scored else np.nan)
        matrix.append(row)
        lines.append(f"| {name} | " + " | ".join(_fmt_rate([t for t in ts if t.maze == m]) for m in mazes)
                     + f" | {_fmt_rate(ts)} |")
    agg = iqm({"all": np.asarray(matrix, dtype=np.float64)})["all"]
    pooled = [t for ts in runs.values() for t in ts]
    lines += ["", f"Pooled over the {len(runs)} runs: {_fmt_rate(pooled)}. Interquartile mean over runs × mazes of "
              f"the per-maze rates (rliable, 95% stratified bootstrap over runs): "
              + (f"{_pct(agg.value)} [{_pct(agg.low)}, {_pct(agg.high)}]" if np.isfinite(agg.low) else
                 f"{_pct(agg.value)} (no interval: one run, or a maze without trials)") + "."]
    return lines


def pooled_report(sweep_dirs: list, out) -> Path:
    """pooled.md over several sweeps of the same recipe (e.g. one per data seed): each sweep's rates and
    the pooled and interquartile-mean rates, with each sweep's protocol line (data seed, model seeds, goals)."""
    runs, lines = {}, []
    for d in map(Path, sweep_dirs):
        trials = load_trials(d)
        spec = read_sweep_spec(d)
        runs[f"{d.parent.name}/{d.name}"] = trials
        if spec is not None:
            goals = "; ".join(f"{n} goals {'seed ' + str(m.random_goals.seed) if m.random_goals else 'fixed'}"
                              for n, m in spec.mazes.items())
            lines.append(f"- `{d}`: data seed {spec.data_seed}, model seeds {spec.seeds}, {goals}; "
                         f"{sum(t.ok for t in trials)} of {len(trials)} trials completed.")
    text = "\n".join([f"# Maze2D goal recovery pooled over {len(runs)} sweeps", "", *lines, "",
                      *rate_table(runs), ""])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(out, text)


def recipe_lines(spec) -> list[str]:
    """What produced these numbers, from the sweep's Maze2DSpec (none without a Maze2D spec.json):
    the profiles differ from the paper in exactly these settings, so the report says which."""
    if spec is None:
        return []
    w, d, r, horizon = spec.windows, spec.diffusion, spec.reward, spec.evaluation.horizon
    scored = f"{horizon} rows long" if horizon else "whole"
    return [f"Recipe (spec.json): windows of {w.horizon} rows, one every {w.stride} steps; "
            f"diffusers T = {d.n_timesteps}, base {d.train_steps:,} steps, experts {spec.expert.describe(d)}; "
            f"triples by {spec.pregen.describe()}; reward {r.kind} {r.hidden}, {r.train_steps:,} steps; "
            f"held-out windows scored {scored}.", ""]


def _one_line(error: str | None, limit: int = 300) -> str:
    """The last non-empty line of an error (a traceback's message), shortened, safe in a table."""
    if not error:
        return "(no error message)"
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[-1] if lines else str(error)
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_report(sweep_dir) -> Path:
    """Write report.md, results.csv and figures/<maze>.png into `sweep_dir`; returns report.md's path."""
    sweep_dir = Path(sweep_dir)
    trials = load_trials(sweep_dir)
    spec = read_sweep_spec(sweep_dir)
    mazes = spec_mazes(spec)
    write_results_csv(trials, sweep_dir / "results.csv", mazes)
    figures = {}
    for name in _maze_order(trials):
        rel = f"figures/{_safe_name(name)}.png"
        ts = [t for t in trials if t.maze == name]
        write_maze_figure(sweep_dir, name, ts, sweep_dir / rel, maze_of(ts[0], mazes))
        figures[name] = rel
    path = write_atomic(sweep_dir / "report.md", render_markdown(trials, figures, sweep_dir, spec))
    write_html_report(path)
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m rrf_ray.maze2d.report",
                                description="Rebuild a Maze2D sweep's report, or pool several sweeps' goal recovery.")
    p.add_argument("sweep_dirs", nargs="+")
    p.add_argument("--pool", metavar="OUT", help="write a pooled report (e.g. pooled.md) over every SWEEP_DIR")
    args = p.parse_args(argv)
    for d in args.sweep_dirs:
        if not (Path(d) / TRIALS_FILE).exists():
            print(f"error: {d} has no {TRIALS_FILE}; is it a Maze2D sweep directory?", file=sys.stderr)
            return 2
    if args.pool:
        print(pooled_report(args.sweep_dirs, args.pool))
    else:
        for d in args.sweep_dirs:
            print(write_report(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
