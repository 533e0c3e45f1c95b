"""The IRL sweep's report, rebuilt from its directory alone: every method in one table, beside the thesis's.

Per method (over seeds): true return mean ± std over all rollouts, the normalised return
(R - R_base) / (R_true - R_base) computed per seed against that seed's base and true-reward
rollouts, and the ERC of learned rewards. Figures: each method's rollouts from every start
point, and the learned rewards' heatmaps next to the true reward's.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from rrf_ray.engine.atomic import write_atomic
from rrf_ray.engine.report import save_figure_atomic
from rrf_ray.irl.spec import THESIS_UMAZE, IRLExperimentSpec

LABELS = {"base": "Base diffuser", "true_reward": "Base + true reward", "irl_mse": "Algorithm 4, MSE",
          "irl_mmd_gauss": "Algorithm 4, MMD Gauss", "irl_mmd_matern": "Algorithm 4, MMD Matérn",
          "bc": "Behaviour cloning", "rrf": "Relative reward (base vs expert diffuser)"}


def load_results(sweep_dir: Path) -> tuple[IRLExperimentSpec, list[dict]]:
    sweep_dir = Path(sweep_dir)
    spec_file, table = sweep_dir / "spec.json", sweep_dir / "trials.json"
    if not spec_file.exists() or not table.exists():
        raise ValueError(f"{sweep_dir} is not an IRL sweep directory (no spec.json / trials.json)")
    spec = IRLExperimentSpec.model_validate_json(spec_file.read_text())
    rows = []
    for t in json.loads(table.read_text()):
        path = sweep_dir / "trials" / t["trial_id"] / "result.json"
        result = json.loads(path.read_text()) if path.exists() else {"status": "missing", "metrics": None}
        rows.append({**t, "status": result.get("status"), "error": result.get("error"),
                     **(result.get("metrics") or {})})
    return spec, rows


def normalised_returns(rows: list[dict]) -> dict[tuple[str, int], float]:
    """(method, seed) -> (R - R_base) / (R_true - R_base) with that seed's base and true-reward means."""
    by = {(r["method"], r["seed"]): r.get("return_mean") for r in rows if r.get("status") == "ok"}
    out = {}
    for (method, seed), value in by.items():
        base, true = by.get(("base", seed)), by.get(("true_reward", seed))
        if value is None or base is None or true is None or true == base:
            continue
        out[method, seed] = (value - base) / (true - base)
    return out


def summarise(spec: IRLExperimentSpec, rows: list[dict]) -> list[dict]:
    """One row per method: pooled return, normalised return and ERC (mean and per seed)."""
    norm = normalised_returns(rows)
    out = []
    for method in spec.active_methods:
        mine = [r for r in rows if r["method"] == method and r.get("status") == "ok"]
        # Pooled over rollouts: the mean of the seeds' means, the std from the seeds' stds and means.
        means = np.array([r["return_mean"] for r in mine], dtype=float)
        stds = np.array([r["return_std"] for r in mine], dtype=float)
        pooled_std = float(np.sqrt(np.mean(stds ** 2 + (means - means.mean()) ** 2))) if len(mine) else float("nan")
        ercs = [r["erc"] for r in mine if r.get("erc") is not None]
        norms = [norm[method, r["seed"]] for r in mine if (method, r["seed"]) in norm]
        out.append({"method": method, "seeds_ok": len(mine), "seeds": len(spec.seeds),
                    "return_mean": float(means.mean()) if len(mine) else float("nan"), "return_std": pooled_std,
                    "normalised_return": float(np.mean(norms)) if norms else float("nan"),
                    "normalised_per_seed": norms, "erc": float(np.mean(ercs)) if ercs else float("nan"),
                    "erc_per_seed": ercs})
    return out


def _f(x: float, digits: int = 1) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def render_markdown(spec: IRLExperimentSpec, rows: list[dict], summary: list[dict], figures: list[str]) -> str:
    e, v, tr = spec.experts, spec.evaluation, spec.true_reward
    lines = [f"# IRL sweep `{spec.name}`: {spec.maze_name}", "",
             f"True reward per step: {tr.offset:g} + {tr.weights[0]:g}·x + {tr.weights[1]:g}·y (x = column + 0.5, "
             "y = row + 0.5 from the top-left corner, walls included).",
             f"Experts: {'the Minari dataset ' + repr(e.dataset) if e.dataset else f'{len(e.starts)} starts x {e.rollouts_per_start} rollouts x {e.steps} steps of the base guided by the true reward'}. "
             f"Evaluation: {len(v.starts)} starts x {v.rollouts_per_start} rollouts x {v.steps} steps per seed "
             f"(seeds {spec.seeds}); ERC on {v.erc_windows} held-out base windows.", "",
             "| method | return (mean ± std) | normalised return | ERC | seeds | thesis return (U-maze) | thesis ERC |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        thesis = THESIS_UMAZE.get(s["method"])
        t_ret = f"{thesis[0]:.1f} ± {thesis[1]:.1f}" if thesis else "—"
        t_erc = f"{thesis[2]:.3f}" if thesis and thesis[2] is not None else "—"
        per_seed = ", ".join(f"{x:.2f}" for x in s["normalised_per_seed"])
        norm = _f(s["normalised_return"], 2) + (f" ({per_seed})" if len(s["normalised_per_seed"]) > 1 else "")
        ercs = ", ".join(f"{x:.3f}" for x in s["erc_per_seed"])
        erc = _f(s["erc"], 3) + (f" ({ercs})" if len(s["erc_per_seed"]) > 1 else "")
        lines.append(f"| {LABELS.get(s['method'], s['method'])} | {_f(s['return_mean'])} ± {_f(s['return_std'])} "
                     f"| {norm} | {erc} | {s['seeds_ok']}/{s['seeds']} | {t_ret} | {t_erc} |")
    lines += ["", "Thesis returns are its Table 1 (its own rollout length and coordinates); compare normalised "
              "returns, not raw ones. Normalised return = (R − R_base)/(R_true − R_base) per seed."]
    if "rrf" in spec.active_methods:
        g = spec.guidance_for("rrf")
        how = (f"the step mean moved once by {g.scale:g} × ∇ρ taken at {g.grad_at}" if g.form == "mean_shift" else
               f"Janner's guidance, x moved by {g.scale:g} × {'variance × ' if g.scale_grad_by_std else ''}∇ρ "
               f"({g.n_guide_steps} step(s)) at x_t")
        fit = [r.get("reward_val_cosine") for r in rows if r.get("method") == "rrf" and r.get("status") == "ok"]
        fit = [f"{x:.3f}" for x in fit if x is not None]
        lines += ["", f"Relative reward: triples by {spec.rrf.pregen.describe()}; rollouts guided by {how}, "
                  f"from t = {g.t_stopgrad} up. Gradient cosine on held-out episodes' triples: "
                  f"{', '.join(fit) if fit else '—'}."]
    base = next((s for s in summary if s["method"] == "base"), None)
    true = next((s for s in summary if s["method"] == "true_reward"), None)
    if base and true and np.isfinite(base["return_mean"]) and np.isfinite(true["return_mean"]):
        gap = true["return_mean"] - base["return_mean"]
        if gap <= max(base["return_std"], true["return_std"]):
            lines += ["", f"**Warning:** the true reward's guided rollouts beat the unguided base by only {gap:.1f} "
                      "(less than a standard deviation): the protocol cannot separate methods; raise the "
                      "guidance scale or the planning horizon."]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["", "## Trials without a result", ""]
        lines += [f"- {r['trial_id']}: {r.get('status')} {str(r.get('error') or '')[:300]}" for r in failed]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def rollouts_figure(sweep_dir: Path, spec: IRLExperimentSpec, rows: list[dict]):
    """One row per method, one column per start point: that method's rollouts (first seed) over the maze."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    maze = spec.maze()
    seed = spec.seeds[0]
    methods = [m for m in spec.active_methods
               if (sweep_dir / "trials" / f"{m}-seed{seed}" / "rollouts.npz").exists()]
    if not methods:
        return None
    starts = np.asarray(spec.evaluation.starts, dtype=float)
    fig = Figure(figsize=(1.6 * len(starts) + 1.5, 1.6 * len(methods) + 0.4))
    for i, m in enumerate(methods):
        data = np.load(sweep_dir / "trials" / f"{m}-seed{seed}" / "rollouts.npz")
        for j, s in enumerate(starts):
            ax = fig.add_subplot(len(methods), len(starts), i * len(starts) + j + 1)
            for r, row in enumerate(maze.layout):
                for c, ch in enumerate(row):
                    if ch == "#":
                        x, y = maze.rowcol_to_xy((r, c))
                        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, color="#8a8a8a"))
            mine = np.all(np.isclose(data["starts"], s), axis=1)
            for obs in data["observations"][mine]:
                ax.plot(obs[:, 0], obs[:, 1], lw=0.7, alpha=0.7)
            sx, sy = maze.rowcol_to_xy(s)
            ax.plot(sx, sy, "o", color="black", ms=3)
            ax.set_xlim(-maze.width / 2, maze.width / 2)
            ax.set_ylim(-maze.height / 2, maze.height / 2)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(m, fontsize=7)
            if i == 0:
                ax.set_title(f"start {tuple(float(v) for v in s)}", fontsize=7)
    return fig


def heatmaps_figure(sweep_dir: Path, spec: IRLExperimentSpec):
    """The true reward and each learned reward (first seed) over the maze."""
    from matplotlib.figure import Figure

    from rrf_ray.irl.true_reward import LinearMazeReward
    from rrf_ray.maze2d.heatmap import Heatmap, plot_heatmap

    seed = spec.seeds[0]
    maps = [(m, sweep_dir / "trials" / f"{m}-seed{seed}" / "heatmap.npz") for m in spec.active_methods]
    maps = [(m, p) for m, p in maps if p.exists()]
    if not maps:
        return None
    maze = spec.maze()
    true = LinearMazeReward(maze, spec.true_reward.weights, spec.true_reward.offset)
    first = Heatmap.from_npz(maps[0][1])
    xs, ys = np.meshgrid(first.x_centres, first.y_centres)
    true_map = Heatmap(np.where(np.isfinite(first.mean), true(np.stack([xs, ys], -1)), np.nan), first.counts,
                       first.x_edges, first.y_edges)
    fig = Figure(figsize=(3.2 * (len(maps) + 1), 3.0))
    plot_heatmap(true_map, maze, ax=fig.add_subplot(1, len(maps) + 1, 1), title="true reward (per step)")
    for i, (m, p) in enumerate(maps):
        plot_heatmap(Heatmap.from_npz(p), maze, ax=fig.add_subplot(1, len(maps) + 1, i + 2), title=m)
    return fig


def write_report(sweep_dir) -> Path:
    sweep_dir = Path(sweep_dir)
    spec, rows = load_results(sweep_dir)
    summary = summarise(spec, rows)
    figures = []
    for name, build in (("rollouts", lambda: rollouts_figure(sweep_dir, spec, rows)),
                        ("heatmaps", lambda: heatmaps_figure(sweep_dir, spec))):
        fig = build()
        if fig is not None:
            save_figure_atomic(fig, sweep_dir / "figures" / f"{name}.png")
            figures.append(f"figures/{name}.png")
    buf = io.StringIO()
    fields = ["trial_id", "method", "seed", "status", "return_mean", "return_std", "normalised_return", "erc",
              "n_rollouts", "learn_s", "rollouts_s", "erc_s"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    norm = normalised_returns(rows)
    for r in rows:
        writer.writerow({**r, "normalised_return": norm.get((r["method"], r["seed"]))})
    write_atomic(sweep_dir / "results.csv", buf.getvalue())
    path = write_atomic(sweep_dir / "report.md", render_markdown(spec, rows, summary, figures))
    return Path(path)
