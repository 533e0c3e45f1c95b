"""The IRL sweep's report, rebuilt from its directory alone: a protocol card, then every method x net in one
table beside the thesis's.

Per method (x net): the per-seed values and, across seeds (each seed a whole run), the interquartile
mean with rliable's stratified-bootstrap 95% interval (`rrf_ray.metrics.aggregate`) of the normalised
return (R - R_base) / (R_oracle - R_base) (each seed against its own base and oracle) and of the ERC,
and the probability that the method's return beats the base's. Failed trials and non-finite metrics
are counted and listed, never dropped silently. Figures: each method's rollouts from every start
point, and the learned rewards' heatmaps next to the true reward's.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from rrf_ray.engine.atomic import write_atomic
from rrf_ray.engine.report import save_figure_atomic, write_html_report
from rrf_ray.irl.spec import THESIS_UMAZE, IRLExperimentSpec
from rrf_ray.metrics.aggregate import NAN_ESTIMATE, iqm, probability_of_improvement

LABELS = {"base": "Base diffuser", "true_reward": "Base + true reward: oracle (uses the true reward)",
          "irl_mse": "Algorithm 4, MSE", "irl_mmd_gauss": "Algorithm 4, MMD Gauss",
          "irl_mmd_matern": "Algorithm 4, MMD Matérn", "bc": "Behaviour cloning",
          "rrf": "Relative reward (base vs expert diffuser)", "gail": "GAIL (imitation; its PPO policy)",
          "airl": "AIRL (imitation; its PPO policy, its reward g(s))",
          "airl_guided": "Base + AIRL's reward g(s) as guide"}
NET_WORDS = {"window": "per-step MLP of the position", "plan": "MLP over the flattened plan"}
THESIS = {"horizon": 128, "n_timesteps": 64, "train_steps": 2_000_000, "stride": 1, "rollouts": 100,
          "base_transitions": 1_000_000}


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
        rows.append({"net": None, **t, "status": result.get("status"), "error": result.get("error"),
                     **(result.get("metrics") or {})})
    return spec, rows


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def oracle_gaps(rows: list[dict]) -> dict[int, tuple[float, float]]:
    """seed -> (R_oracle - R_base, its standard error) from that seed's base and oracle rollouts (means, stds
    and counts); seeds missing either are absent."""
    ok = {(r["method"], r["seed"]): r for r in rows if r.get("status") == "ok" and r.get("net") is None}
    out = {}
    for (method, seed), base in ok.items():
        true = ok.get(("true_reward", seed))
        if method != "base" or true is None:
            continue  # one entry per seed: its base row, with its oracle
        parts = [base.get("return_mean"), true.get("return_mean"), base.get("return_std"), true.get("return_std")]
        if not all(_finite(x) for x in parts):
            continue
        n_base, n_true = (max(1, int(r.get("n_rollouts") or 1)) for r in (base, true))
        se = math.sqrt(parts[2] ** 2 / n_base + parts[3] ** 2 / n_true)
        out[seed] = (parts[1] - parts[0], se)
    return out


def unnormalisable_seeds(rows: list[dict]) -> list[int]:
    """Seeds whose oracle does not beat their base by two standard errors: (R - R_base) / (R_oracle - R_base)
    divides by noise there (a 30-point gap gave ratios from -55 to +92), so they get no normalised return."""
    return sorted(s for s, (gap, se) in oracle_gaps(rows).items() if not gap > 2 * se)


def normalised_returns(rows: list[dict]) -> dict[tuple[str, str | None, int], float]:
    """(method, net, seed) -> (R - R_base) / (R_oracle - R_base) with that seed's base and oracle (true-reward)
    means; absent where a part is missing, failed or non-finite, or the oracle does not clearly beat the base
    (unnormalisable_seeds)."""
    by = {(r["method"], r.get("net"), r["seed"]): r.get("return_mean") for r in rows if r.get("status") == "ok"}
    bad = set(unnormalisable_seeds(rows))
    out = {}
    for (method, net, seed), value in by.items():
        base, true = by.get(("base", None, seed)), by.get(("true_reward", None, seed))
        # a seed without stds to judge by (unnormalisable_seeds cannot) needs at least a gain
        if not (_finite(value) and _finite(base) and _finite(true)) or seed in bad or true <= base:
            continue
        out[method, net, seed] = (value - base) / (true - base)
    return out


def variants(spec: IRLExperimentSpec) -> list[tuple[str, str | None]]:
    return [(m, n) for m in spec.active_methods for n in spec.nets_of(m)]


def summarise(spec: IRLExperimentSpec, rows: list[dict], reps: int | None = None) -> list[dict]:
    """One row per method x net: per-seed values, pooled return, IQMs with intervals, P(return > base), and the
    counts of trials failed (or missing) and of ok trials whose metric is not finite."""
    norm, bad = normalised_returns(rows), set(unnormalisable_seeds(rows))
    kw = {} if reps is None else {"reps": reps}
    base_returns = [r.get("return_mean") for r in rows if r["method"] == "base" and r.get("status") == "ok"
                    and _finite(r.get("return_mean"))]
    out = []
    for method, net in variants(spec):
        mine = [r for r in rows if r["method"] == method and r.get("net") == net]
        ok = [r for r in mine if r.get("status") == "ok"]
        returns = {r["seed"]: r.get("return_mean") for r in ok}
        finite = [r for r in ok if _finite(r.get("return_mean")) and _finite(r.get("return_std"))]
        means = np.array([r["return_mean"] for r in finite], dtype=float)
        stds = np.array([r["return_std"] for r in finite], dtype=float)
        # Pooled over rollouts: the mean of the seeds' means, the std from the seeds' stds and means.
        pooled_std = float(np.sqrt(np.mean(stds ** 2 + (means - means.mean()) ** 2))) if len(finite) else math.nan
        normalised = {r["seed"]: norm.get((method, net, r["seed"]), math.nan) for r in ok if r["seed"] not in bad}
        ercs = {r["seed"]: r.get("erc") for r in ok} if spec.scores_reward(method) else {}
        per_step = spec.scores_reward(method) and spec.per_step(method, net)
        epics = {r["seed"]: r.get("epic") for r in ok} if per_step else {}
        starcs = {r["seed"]: r.get("starc") for r in ok} if per_step else {}
        row = {"method": method, "net": net, "trials": len(mine), "ok": len(ok),
               "failed": [r["trial_id"] for r in mine if r.get("status") != "ok"],
               "return_mean": float(means.mean()) if len(finite) else math.nan, "return_std": pooled_std,
               "returns_per_seed": returns, "normalised_per_seed": normalised, "erc_per_seed": ercs,
               "epic_per_seed": epics, "starc_per_seed": starcs, "per_step": per_step,
               "scales_per_seed": {r["seed"]: r.get("guidance_scale") for r in ok},
               "nan_return": sorted(s for s, v in returns.items() if not _finite(v)),
               "nan_normalised": sorted(s for s, v in normalised.items() if not _finite(v)),
               "nan_erc": sorted(s for s, v in ercs.items() if not _finite(v)),
               "nan_epic": sorted(s for s, v in epics.items() if not _finite(v))}
        scores = {"normalised": [v for v in normalised.values() if _finite(v)],
                  "return": [v for v in returns.values() if _finite(v)],
                  "erc": [v for v in ercs.values() if _finite(v)], "epic": [v for v in epics.values() if _finite(v)],
                  "starc": [v for v in starcs.values() if _finite(v)]}
        est = iqm({k: np.asarray(v, dtype=float) for k, v in scores.items() if v}, **kw)
        row["normalised_iqm"] = est.get("normalised", NAN_ESTIMATE)
        row["return_iqm"] = est.get("return", NAN_ESTIMATE)
        row["erc_iqm"] = est.get("erc", NAN_ESTIMATE)
        row["epic_iqm"] = est.get("epic", NAN_ESTIMATE)
        row["starc_iqm"] = est.get("starc", NAN_ESTIMATE)
        mine_returns = [v for v in returns.values() if _finite(v)]
        row["p_improvement"] = (probability_of_improvement(np.asarray(mine_returns), np.asarray(base_returns), **kw)
                                if method != "base" and mine_returns and base_returns else NAN_ESTIMATE)
        out.append(row)
    return out


def _f(x, digits: int = 1) -> str:
    return "—" if not _finite(x) else f"{x:.{digits}f}"


def _per_seed(values: dict, digits: int) -> str:
    return ", ".join(f"s{s}: {_f(v, digits) if _finite(v) else 'NaN'}" for s, v in sorted(values.items())) or "—"


def _per_seed_normalised(s: dict, unnormalisable: list[int]) -> str:
    text = _per_seed(s["normalised_per_seed"], 2)
    marks = [f"s{b}: n/a" for b in unnormalisable if b in s["returns_per_seed"]]
    return ", ".join(x for x in [text if text != "—" else "", *marks] if x) or "—"


def _counts(s: dict, nan_key: str) -> str:
    text = f"{s['ok']}/{s['trials']}"
    if s["failed"]:
        text += f", {len(s['failed'])} failed"
    if s[nan_key]:
        text += f", {len(s[nan_key])} NaN"
    return text


def _label(method: str, net: str | None) -> str:
    return LABELS.get(method, method)


def _scale_text(spec: IRLExperimentSpec, s: dict) -> str:
    rule, _ = spec.scale_rule(s["method"])
    if rule == "none":
        return "—"
    if rule != "selected":
        fixed = f"{spec.guidance_for(s['method']).scale:g}"
        return {"user": f"{fixed} (fixed by the user, not selected)", "oracle": f"{fixed} (the experts' own)",
                "configured": f"{fixed} (configured, not selected)"}[rule]
    chosen = [f"s{seed}: {v:g}" for seed, v in sorted(s["scales_per_seed"].items()) if _finite(v)]
    return "selected: " + (", ".join(chosen) or "—")


def protocol_card(spec: IRLExperimentSpec, rows: list[dict]) -> list[str]:
    """What was selected on what, what each seed varies, how returns and ERC are measured, and what differs
    from the thesis: the facts a reader needs before the numbers."""

    e, v, irl, w = spec.experts, spec.evaluation, spec.irl, spec.windows
    n_eval = len(v.starts) * v.rollouts_per_start
    lines = ["## Protocol card", "",
             f"- **Seeds** {spec.seeds}: each a whole run. Seed s has its own base data (generated with "
             f"data seed {spec.data_seed} + s), its own base diffuser (trained with seed s), its own expert "
             f"demonstrations (its base guided by the true reward; noise seed {e.seed} + s, selection-only "
             f"ones {e.selection_seed} + s), its own learned rewards and policies (seed s) and its own rollouts.",
             ]
    if e.dataset is None:
        lines.append(f"- **Experts** per seed: training {len(e.starts)} starts × {e.rollouts_per_start} rollouts × "
                     f"{e.steps} steps, guided by the true reward at scale {e.guidance.scale:g}; **selection-only** "
                     f"{len(e.starts)} starts × {e.selection_rollouts_per_start} rollouts (their own Minari dataset "
                     "and noise seed): no method trains on them (not BC, not Algorithm 4, not the relative reward's "
                     "expert diffuser or triples); only the guidance-scale selection reads them.")
    else:
        lines.append(f"- **Experts**: the Minari dataset {e.dataset!r}, the same for every seed; its last "
                     f"{e.n_selection_episodes()} episodes are **selection-only** (no method trains on them).")
    lines += ["- **Guidance scales** (the report rollouts run once per trial, at this scale):"]
    lines += [f"  - {_label(m, None)}: {spec.describe_scale(m)}" for m in spec.active_methods]
    if any(spec.scale_rule(m)[0] == "selected" for m in spec.active_methods):
        lines.append(f"  - Selection criterion: the mean squared distance over the first K = {irl.segment_steps} rows "
                     f"(every {w.stride} steps; columns {irl.compare_dims or 'all'}) between the base's plans guided "
                     "by the learned reward, each conditioned on the first state of a held-out expert segment, and "
                     "that segment; every candidate draws the same noise (seed selection.seed + s = "
                     f"{[spec.selection_seed(s) for s in spec.seeds]}, not a report-rollout seed); the least wins. "
                     "It reads neither the true reward nor the report rollouts.")
    if "true_reward" in spec.active_methods:
        lines.append("  - The oracle (base + true reward) uses the true reward, at the demonstrators' own guidance "
                     f"(experts.guidance, scale {spec.guidance_for('true_reward').scale:g}).")
    lines += [f"- **Nets** {spec.nets} (each reward-learning method runs at each; base, oracle and BC have none):"]
    for net in spec.nets:
        a4 = spec.irl_spec(net)
        r = spec.rrf_reward(net)
        a4_text = (f"per-step MLP {a4.hidden} (ReLU) of columns {a4.input_dims}, averaged over rows" if net == "window"
                   else f"MLP {a4.hidden} (ReLU) over the flattened {w.horizon}-row plan")
        r_text = (f"{r.kind}, {r.model_horizon}-step blocks of columns {r.input_dims or 'all'}, hidden {r.hidden} "
                  "(Mish), with a diffusion-step embedding")
        lines.append(f"  - {net} ({NET_WORDS[net]}): Algorithm 4 {a4_text}; relative reward {r_text}.")
    lines += [f"- **Report rollouts** per method and seed: {len(v.starts)} starts × {v.rollouts_per_start} rollouts "
              f"× "
              f"{v.steps} steps = {n_eval} rollouts, in the real PointMaze, scored by the true reward; environment "
              f"seed {v.seed} + s, planner noise seed s. **Re-planning**, not open-loop: a receding horizon that "
              f"plans, executes the plan's first action and re-plans every {v.replan_every} step(s).",
              "- **Normalisation**: (R − R_base)/(R_oracle − R_base) per seed, against that seed's base and "
              "oracle; none for a seed whose oracle does not beat its base by two standard errors. "
              "Across seeds: the interquartile mean of returns and of normalised returns with rliable's "
              "stratified-bootstrap 95% interval (no interval with one seed), and P(return > base's) over the "
              "seeds' mean returns (rliable).",
              f"- **ERC** (Pearson distance, lower is better) between learned and true returns of {v.erc_windows} "
              f"{w.horizon}-row windows drawn uniformly across the held-out episodes of that seed's base data (the "
              "coverage set: reward-agnostic data no reward trained on).",
              f"- **EPIC and STARC** (Gleave et al. 2021; Skalse et al. 2024; metrics/reward_distance.py) between the "
              f"learned and the true per-step reward, both as the reward of arriving in s', canonicalised at γ = 1 "
              f"(returns here are undiscounted), over one transition drawn from each of those {v.erc_windows} "
              "windows (the canonical sample: the same transitions' states and actions), with a 95% BCa bootstrap "
              "interval per trial. Unlike ERC they do not see potential shaping. Only rewards of one state have a "
              "per-step form (the window nets, AIRL's g(s)); a plan net scores whole plans and gets ERC only."]
    diffs = []
    for what, mine, thesis in (("planning horizon H", w.horizon, THESIS["horizon"]),
                               ("diffusion steps T", spec.diffusion.n_timesteps, THESIS["n_timesteps"]),
                               ("base training steps", spec.diffusion.train_steps, THESIS["train_steps"]),
                               ("time stride", w.stride, THESIS["stride"]),
                               ("base transitions", spec.data.base_transitions, THESIS["base_transitions"]),
                               ("report rollouts per seed", n_eval, THESIS["rollouts"])):
        if mine != thesis:
            diffs.append(f"{what} {mine:,} (thesis {thesis:,})")
    diffs.append("ERC on held-out base windows across episodes (the thesis: 100 overlapping windows of one episode)")
    diffs.append("learned rewards' guidance scales selected on held-out expert segments, each seed a whole run")
    lines.append("- **Differs from the thesis**: " + "; ".join(diffs) + ".")
    return lines


def render_markdown(spec: IRLExperimentSpec, rows: list[dict], summary: list[dict], figures: list[str]) -> str:
    tr = spec.true_reward
    lines = [f"# IRL sweep `{spec.name}`: {spec.maze_name}", "",
             f"True reward per step: {tr.offset:g} + {tr.weights[0]:g}·x + {tr.weights[1]:g}·y (x = column + 0.5, "
             "y = row + 0.5 from the top-left corner, walls included).", ""]
    lines += protocol_card(spec, rows)
    lines += ["", "## Behaviour", "",
              "| method | net | guidance scale | return (mean ± std) | return IQM [95% CI] | normalised, per seed "
              "| normalised IQM [95% CI] | P(return > base) [95% CI] | trials ok | thesis return (U-maze) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    bad = unnormalisable_seeds(rows)
    for s in summary:
        thesis = THESIS_UMAZE.get(s["method"]) if s["net"] in (None, "plan") else None
        t_ret = f"{thesis[0]:.1f} ± {thesis[1]:.1f}" if thesis else "—"
        poi = s["p_improvement"].format() if s["method"] != "base" else "—"
        lines.append(f"| {_label(s['method'], s['net'])} | {s['net'] or '—'} | {_scale_text(spec, s)} "
                     f"| {_f(s['return_mean'])} ± {_f(s['return_std'])} | {s['return_iqm'].format(1)} "
                     f"| {_per_seed_normalised(s, bad)} "
                     f"| {s['normalised_iqm'].format()} | {poi} | {_counts(s, 'nan_normalised')} | {t_ret} |")
    if bad:
        gaps = oracle_gaps(rows)
        lines += ["", "**No normalised return for seed(s) " + ", ".join(str(b) for b in bad) + "**: there the oracle "
                  "does not beat the base by two standard errors (" + "; ".join(
                      f"s{b}: R_oracle − R_base = {gaps[b][0]:.1f} ± {gaps[b][1]:.1f}" for b in bad) + "), so the ratio "
                  "would divide by noise. Their trials count in the return IQM and P(return > base); the normalised "
                  "IQM is over the other seeds."]
    learned = [s for s in summary if spec.scores_reward(s["method"])]
    if learned:
        lines += ["", "## Reward quality (ERC, EPIC, STARC: distances to the true reward, lower is better)", "",
                  "| method | net | ERC, per seed | ERC IQM [95% CI] | EPIC, per seed | EPIC IQM [95% CI] "
                  "| STARC IQM [95% CI] | trials ok | thesis ERC |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in learned:
            thesis = THESIS_UMAZE.get(s["method"]) if s["net"] in (None, "plan") else None
            t_erc = f"{thesis[2]:.3f}" if thesis and thesis[2] is not None else "—"
            epic = (_per_seed(s["epic_per_seed"], 3), s["epic_iqm"].format(3), s["starc_iqm"].format(3)) \
                if s["per_step"] else ("plan-level: ERC only",) * 3
            lines.append(f"| {_label(s['method'], s['net'])} | {s['net'] or '—'} | {_per_seed(s['erc_per_seed'], 3)} "
                         f"| {s['erc_iqm'].format(3)} | {' | '.join(epic)} | {_counts(s, 'nan_erc')} | {t_erc} |")
    lines += ["", "Thesis figures are its Table 1 (its own rollout length and coordinates, the plan net); compare "
              "normalised returns, not raw ones. \"NaN\": a finished trial whose value is not finite (counted, not "
              "averaged); the IQM is over the finite ones."]
    selected = [r for r in rows if r.get("status") == "ok" and r.get("selection_candidates")]
    if selected:
        lines += ["", "## Guidance-scale selection (on held-out expert segments; no true reward)", "",
                  "| trial | candidate → distance | unguided | chosen |", "|---|---|---|---|"]
        for r in selected:
            table = ", ".join(f"{c:g} → {_f(d, 4) if _finite(d) else 'NaN'}"
                              for c, d in zip(r["selection_candidates"], r["selection_distances"]))
            lines.append(f"| {r['trial_id']} | {table} | {_f(r.get('selection_unguided'), 4)} "
                         f"| {r.get('guidance_scale', math.nan):g} |")
    if "rrf" in spec.active_methods:
        g = spec.guidance_for("rrf")
        how = (f"the step mean moved once by ω × ∇ρ taken at {g.grad_at}" if g.form == "mean_shift" else
               f"Janner's guidance, x moved by ω × {'variance × ' if g.scale_grad_by_std else ''}∇ρ "
               f"({g.n_guide_steps} step(s)) at x_t")
        fit = [f"{r['trial_id']} {r['reward_val_cosine']:.3f}" for r in rows
               if r.get("method") == "rrf" and r.get("status") == "ok" and _finite(r.get("reward_val_cosine"))]
        lines += ["", f"Relative reward: triples by {spec.rrf.pregen.describe()}; rollouts guided by {how}, "
                  f"from t = {g.t_stopgrad} up. Gradient cosine on held-out episodes' triples: "
                  f"{', '.join(fit) if fit else '—'}."]
    base = next((s for s in summary if s["method"] == "base"), None)
    true = next((s for s in summary if s["method"] == "true_reward"), None)
    if base and true and _finite(base["return_mean"]) and _finite(true["return_mean"]):
        gap = true["return_mean"] - base["return_mean"]
        if gap <= max(base["return_std"], true["return_std"]):
            lines += ["", f"**Warning:** the true reward's guided rollouts beat the unguided base by only {gap:.1f} "
                      "(less than a standard deviation): the protocol cannot separate methods; raise the "
                      "guidance scale or the planning horizon."]
    failed = [r for r in rows if r.get("status") != "ok"]
    lines += ["", f"## Trials without a result: {len(failed)} of {len(rows)}", ""]
    lines += [f"- {r['trial_id']}: {r.get('status')} {str(r.get('error') or '')[:300]}" for r in failed] or ["None."]
    nan = [(r["trial_id"], k) for r in rows if r.get("status") == "ok"
           for k in ("return_mean", "return_std", "erc", "guidance_scale") if k in r and not _finite(r[k])]
    if nan:
        lines += ["", f"## Non-finite metrics: {len(nan)}", ""] + [f"- {t}: {k}" for t, k in nan]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _first_seed_trials(sweep_dir: Path, spec: IRLExperimentSpec, rows: list[dict], filename: str):
    """(label, path) of `filename` in each method x net's trial of the first seed, where it exists."""
    seed = spec.seeds[0]
    out = []
    for r in rows:
        if r["seed"] == seed and (sweep_dir / "trials" / r["trial_id"] / filename).exists():
            out.append((r["method"] if r.get("net") is None else f"{r['method']} ({r['net']})",
                        sweep_dir / "trials" / r["trial_id"] / filename))
    return out


def rollouts_figure(sweep_dir: Path, spec: IRLExperimentSpec, rows: list[dict]):
    """One row per method, one column per start point: that method's rollouts (first seed) over the maze."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    maze = spec.maze()
    methods = _first_seed_trials(sweep_dir, spec, rows, "rollouts.npz")
    if not methods:
        return None
    starts = np.asarray(spec.evaluation.starts, dtype=float)
    fig = Figure(figsize=(1.6 * len(starts) + 1.5, 1.6 * len(methods) + 0.4))
    for i, (m, path) in enumerate(methods):
        data = np.load(path)
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


def heatmaps_figure(sweep_dir: Path, spec: IRLExperimentSpec, rows: list[dict]):
    """The true reward and each learned reward (first seed) over the maze."""
    from matplotlib.figure import Figure

    from rrf_ray.irl.true_reward import LinearMazeReward
    from rrf_ray.maze2d.heatmap import Heatmap, plot_heatmap

    maps = _first_seed_trials(sweep_dir, spec, rows, "heatmap.npz")
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


def write_report(sweep_dir, reps: int | None = None) -> Path:
    """report.md, results.csv and figures/ of a sweep directory; `reps`: bootstrap resamples (default
    rrf_ray.metrics.aggregate's)."""
    sweep_dir = Path(sweep_dir)
    spec, rows = load_results(sweep_dir)
    summary = summarise(spec, rows, reps)
    figures = []
    for name, build in (("rollouts", lambda: rollouts_figure(sweep_dir, spec, rows)),
                        ("heatmaps", lambda: heatmaps_figure(sweep_dir, spec, rows))):
        fig = build()
        if fig is not None:
            save_figure_atomic(fig, sweep_dir / "figures" / f"{name}.png")
            figures.append(f"figures/{name}.png")
    buf = io.StringIO()
    fields = ["trial_id", "method", "net", "seed", "status", "guidance_scale", "scale_rule", "return_mean",
              "return_std", "normalised_return", "erc", "epic", "epic_low", "epic_high", "starc", "n_rollouts", "selection_s", "learn_s",
              "rollouts_s", "erc_s", "epic_s"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    norm = normalised_returns(rows)
    for r in rows:
        writer.writerow({**r, "normalised_return": norm.get((r["method"], r.get("net"), r["seed"]))})
    write_atomic(sweep_dir / "results.csv", buf.getvalue())
    path = write_atomic(sweep_dir / "report.md", render_markdown(spec, rows, summary, figures))
    write_html_report(path)
    return Path(path)
