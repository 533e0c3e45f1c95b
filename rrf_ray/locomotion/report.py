"""Locomotion report: the protocol card, Table 1 of the paper from report rollouts, paired differences.

Rebuilt from the sweep directory's files alone (spec.json, trials.json, trials/*/result.json), so it
can be made while a sweep runs or after it died; missing and failed trials are listed. Each steered
method's (omega, t_stopgrad) is chosen per environment and model seed on the selection rollouts
(locomotion.selection); Table 1 holds only the report rollouts: fresh seeds, the chosen setting and
the unsteered planner, which share their environment and noise seeds, so the difference of a steered
method to unsteered is paired episode by episode.

Usage: python -m rrf_ray.locomotion.report SWEEP_DIR   (report.md, results.csv, figures/score_vs_omega.png)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from rrf_ray.engine.atomic import write_atomic
from rrf_ray.locomotion.selection import (REPORT, SELECTION, TRANSFER, Setting, base_seed_of, chosen_settings,
                                         pooled_settings)
from rrf_ray.metrics.aggregate import Estimate, iqm, mean_interval, paired_difference, probability_of_improvement

# docs/locomotion.md: the paper's Table 1 (unsteered, discriminator, relative reward).
PAPER_TABLE1 = {"halfcheetah": (30.38, 30.41, 31.65), "hopper": (24.67, 25.12, 27.04),
                "walker2d": (28.20, 27.98, 38.40)}
# The paper's Table 2 (unsteered, relative reward): rewards steering base diffusers trained with new seeds.
PAPER_TABLE2 = {"halfcheetah": (31.74, 33.06), "hopper": (22.95, 25.03), "walker2d": (30.44, 42.40)}
PAPER_ROLLOUTS, PAPER_T = 512, 20
METHOD_NAMES = {"unsteered": "Unsteered", "discriminator": "Discriminator", "rrf": "Relative reward (ours)"}
CSV_FIELDS = ["trial_id", "phase", "env", "method", "model_seed", "base_seed", "omega", "t_stopgrad", "seeds", "status", "score",
              "score_se", "return_mean", "length_mean", "n_episodes", "rollout_s", "error"]


def load_results(sweep_dir) -> tuple[list[dict], list[dict]]:
    """(every result.json found, expected trials without an ok result, marked missing or failed)."""
    sweep_dir = Path(sweep_dir)
    results = []
    for path in sorted((sweep_dir / "trials").glob("*/result.json")):
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    ok = {r["trial_id"] for r in results if r.get("status") == "ok"}
    expected = json.loads((sweep_dir / "trials.json").read_text()) if (sweep_dir / "trials.json").exists() else []
    found = {r["trial_id"] for r in results}
    missing = [{**t, "status": "missing"} for t in expected if t["trial_id"] not in found]
    failed = [r for r in results if r["trial_id"] not in ok]
    return results, missing + failed


def report_episodes(results: list[dict], phase: str = REPORT) -> dict[tuple, np.ndarray]:
    """(env, method, model_seed, report seed) -> that report trial's episode scores (the chosen setting's).
    phase TRANSFER: (env, method, model_seed, base_seed, report seed), the unsteered rows under model seed b."""
    chosen = chosen_settings(results)
    out = {}
    for r in results:
        if r.get("status") != "ok" or r.get("phase") != phase:
            continue
        key = (r["env"], r["method"], int(r["model_seed"]))
        if r["method"] != "unsteered":
            c = chosen.get(key)
            if c is None or (c.omega, c.t_stopgrad) != (float(r["omega"]), int(r["t_stopgrad"])):
                continue  # a report trial of a setting that is no longer the chosen one
        if phase == TRANSFER:
            key = (*key, base_seed_of(r))
        out[(*key, int(r["seeds"][0]))] = np.asarray(r["metrics"]["scores"], dtype=np.float64)
    return out


def transfer_lines(results: list[dict]) -> list[str]:
    """The transfer table: each model seed's guide, at its chosen setting, steering base diffusers of other
    seeds, paired with the unsteered planner of the same base on the same report rollouts."""
    episodes = report_episodes(results, TRANSFER)
    if not episodes:
        return []
    lines = ["", "## Transfer to base diffusers of other seeds (report rollouts)", "",
             "A guide trained with model seed m (and its ω / t_stopgrad, chosen on model seed m's own base) steers "
             "a base diffuser trained with another seed b, never re-tuned (the paper's transfer table). Δ = "
             "steered − unsteered on base b, paired rollout by rollout; mean [95% bootstrap interval].", "",
             "| env | base seed | method | guide's model seed | score | Δ vs unsteered (same base) | "
             "interval excludes 0 |", "|---|---|---|---|---|---|---|"]
    envs = sorted({k[0] for k in episodes})
    for env in envs:
        bases = sorted({k[3] for k in episodes if k[0] == env})
        for b in bases:
            unsteered = {k[4]: v for k, v in episodes.items() if k[0] == env and k[1] == "unsteered" and k[3] == b}
            if unsteered:
                x = np.concatenate([unsteered[s] for s in sorted(unsteered)])
                lines.append(f"| {env} | {b} | unsteered | — | {_estimate_cell(mean_interval(x))} | — | — |")
            for method in ("discriminator", "rrf"):
                guides = sorted({k[2] for k in episodes if k[0] == env and k[1] == method and k[3] == b})
                for m in guides:
                    mine = {k[4]: v for k, v in episodes.items() if k[:4] == (env, method, m, b)}
                    pairs = [(mine[s], unsteered[s]) for s in sorted(mine) if s in unsteered
                             and len(unsteered[s]) == len(mine[s])]
                    x = np.concatenate([mine[s] for s in sorted(mine)])
                    d = paired_difference(np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0),
                                          np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0))
                    lines.append(f"| {env} | {b} | {method} | {m} | {_estimate_cell(mean_interval(x))} | "
                                 f"{_estimate_cell(d)} | {'yes' if d.excludes_zero else 'no'} |")
    paper = [f"{env} {' → '.join(f'{v:.2f}' for v in PAPER_TABLE2[env.split('-')[0].lower()])}" for env in envs
             if env.split("-")[0].lower() in PAPER_TABLE2]
    if paper:
        lines += ["", "The paper's Table 2 (unsteered → relative reward, D4RL v2, 512 rollouts, 5 seeds): "
                  + "; ".join(paper) + "."]
    return lines


def method_scores(episodes: dict, env: str, method: str, model_seeds=None) -> np.ndarray:
    keys = sorted(k for k in episodes if k[0] == env and k[1] == method and (model_seeds is None or k[2] in model_seeds))
    return np.concatenate([episodes[k] for k in keys]) if keys else np.zeros(0)


def paired(episodes: dict, env: str, method: str, model_seeds) -> tuple[np.ndarray, np.ndarray]:
    """Steered and unsteered episode scores on the report seeds both have, pair by pair."""
    a, b = [], []
    for (e, m, ms, seed), scores in sorted(episodes.items()):
        if e == env and m == method and ms in model_seeds:
            other = episodes.get((env, "unsteered", ms, seed))
            if other is not None and len(other) == len(scores):
                a.append(scores)
                b.append(other)
    return (np.concatenate(a), np.concatenate(b)) if a else (np.zeros(0), np.zeros(0))


def _estimate_cell(e: Estimate, n_bad: int = 0) -> str:
    text = e.format() if e.n else "—"
    return text + (f" ({n_bad} non-finite)" if n_bad else "")


def _data_cell(scores: dict | None) -> str:
    return "—" if not scores else f"{scores['score']:.2f} ± {scores['score_se']:.2f}"


def _spec(sweep_dir: Path):
    from rrf_ray.locomotion.spec import LocomotionSweepSpec

    try:
        return LocomotionSweepSpec.model_validate_json((sweep_dir / "spec.json").read_text())
    except (OSError, ValueError):
        return None


def protocol_card(spec) -> list[str]:
    """What was chosen on what, seeds, rollouts, normalisation, re-planning, and what differs from the paper."""
    if spec is None:
        return ["## Protocol", "", "spec.json is missing or from an older rrf_ray: the protocol cannot be stated.", ""]
    s, r = spec.search, spec.rollout
    search = (f"every ω in {s.omegas} × t_stopgrad in {s.t_stopgrads}" if s.search == "grid" else
              f"{s.optuna_samples} Optuna samples of ω in [{min(s.omegas)}, {max(s.omegas)}] × t_stopgrad in "
              f"{s.t_stopgrads}")
    envs = ", ".join(e.env_id for e in spec.environments.values())
    differs = [f"gymnasium {envs} (MuJoCo v5) and local Minari datasets instead of D4RL v2",
               f"{r.n_envs * len(s.report_seeds)} report rollouts per method and model seed (paper: {PAPER_ROLLOUTS})",
               f"T = {spec.diffusion.n_timesteps} denoising steps (paper: {PAPER_T})",
               "the paper chose ω and t_stopgrad on the rollouts it reported; here they are chosen on separate "
               "selection rollouts"]
    return (["## Protocol", "",
            f"- **Selected on selection rollouts:** each steered method's setting, {search} ({s.search}), chosen "
            f"per environment and model seed by the mean D4RL score of {r.n_envs} rollouts × selection seeds "
            f"{s.selection_seeds}; ties go to the smaller ω. Nothing else is tuned on rollouts.",
            f"- **Reported on fresh rollouts:** Table 1 holds only report seeds {s.report_seeds} "
            f"({r.n_envs} rollouts each) of the chosen setting and of the unsteered planner. Rollout seed s resets "
            "environment i with seed 10000·s + i and draws the planner's noise from seed 1000003·s + step, so "
            "steered and unsteered report rollouts share starts and noise and differ pairwise only by the guidance.",
            f"- **Seeds:** model seeds {spec.seeds}; each trains its own base and expert diffusers, relative reward "
            "and discriminator and chooses its own setting. The datasets are the same for every model seed."] + ([f"- **Transfer:** base diffusers of seeds {spec.transfer_seeds} (trained like the model seeds' "
                "bases, never seen by a reward or a selection) are steered by each model seed's guides at that model "
                "seed's chosen setting, on the report seeds."] if spec.transfer_seeds else []) +
            [f"- **Rollouts:** receding horizon: plan H = {', '.join(str(spec.horizon(e)) for e in spec.environments)} "
            f"steps, execute the first action, re-plan every step; at most {r.max_steps} steps.",
            "- **Normalisation:** D4RL score 100 (R − R_min) / (R_max − R_min) with D4RL's reference returns.",
            "- **Intervals:** 95% bootstrap (BCa) over report episodes for a mean and for a paired difference; "
            "across model seeds, rliable's interquartile mean with a stratified-bootstrap interval and the "
            "probability of improvement (with two or more model seeds).",
            "- **Differs from the paper:** " + "; ".join(differs) + ".", ""])


def markdown(results: list[dict], problems: list[dict], sweep_name: str, data: dict | None = None,
             spec=None) -> str:
    """`data`: the base and expert data's own scores per environment (data_scores.json), if known."""
    episodes = report_episodes(results)
    chosen = chosen_settings(results)
    selection = pooled_settings(results, SELECTION)
    data = data or {}
    envs = sorted({k[0] for k in episodes} | {s.env for s in selection.values()})
    model_seeds = sorted({k[2] for k in episodes} | {s.model_seed for s in selection.values()})
    steps = sorted({r["steps"] for d in data.values() for r in d.values()})
    lines = [f"# Locomotion steering: {sweep_name}", ""] + protocol_card(spec)
    lines += ["## Table 1 (report rollouts)", "",
              "D4RL-normalised score, mean [95% bootstrap interval] over every report rollout of every model seed, "
              "each steered method at its setting chosen on the selection rollouts (below). The data columns score "
              "the episodes the base and the expert were trained on (mean ± standard error)"
              + (f", over their first {', '.join(map(str, steps))} steps (the rollouts' length)" if steps else "")
              + ".", "",
              "| Environment | Base data | Unsteered | Discriminator | Relative reward (ours) | Expert data | "
              "Paper (unsteered / discriminator / RRF) |", "|---|---|---|---|---|---|---|"]
    for env in envs:
        cells = []
        for method in ("unsteered", "discriminator", "rrf"):
            x = method_scores(episodes, env, method)
            cells.append(_estimate_cell(mean_interval(x[np.isfinite(x)]), int((~np.isfinite(x)).sum())) if len(x)
                         else "—")
        paper = PAPER_TABLE1.get(env.split("-")[0].lower())
        scores = data.get(env, {})
        lines.append(f"| {env} | {_data_cell(scores.get('base'))} | {' | '.join(cells)} | "
                     f"{_data_cell(scores.get('expert'))} | "
                     f"{'—' if paper is None else ' / '.join(f'{v:.2f}' for v in paper)} |")
    lines += ["", "## Steered against unsteered (paired, report rollouts)", "",
              "Δ = steered − unsteered score of the same report rollout (same start, same noise), mean [95% "
              "bootstrap interval]; a gain is established only where the interval excludes 0.", "",
              "| env | method | model seed | chosen ω / t_stopgrad | selection score | report score | "
              "Δ vs unsteered | interval excludes 0 |", "|---|---|---|---|---|---|---|---|"]
    for env in envs:
        for method in ("discriminator", "rrf"):
            groups = [([m], str(m)) for m in model_seeds] + ([(model_seeds, "all")] if len(model_seeds) > 1 else [])
            for seeds, label in groups:
                picks = [chosen.get((env, method, m)) for m in seeds]
                if all(p is None for p in picks):
                    continue
                a, b = paired(episodes, env, method, seeds)
                d = paired_difference(a, b)
                setting = "; ".join("—" if p is None else f"{p.omega:g} / {p.t_stopgrad}" for p in picks)
                sel = "; ".join("—" if p is None else f"{p.mean:.2f} ± {p.se:.2f}" for p in picks)
                report = mean_interval(method_scores(episodes, env, method, seeds))
                lines.append(f"| {env} | {method} | {label} | {setting} | {sel} | {_estimate_cell(report)} | "
                             f"{_estimate_cell(d)} | {'yes' if d.excludes_zero else 'no'} |")
    if len(model_seeds) > 1:
        lines += ["", "## Across model seeds (rliable)", "",
                  "Per model seed, the mean report score; across seeds, the interquartile mean [95% stratified "
                  "bootstrap interval] and the probability that the method's seed beats the unsteered planner's.", "",
                  "| env | method | per model seed | IQM | P(method > unsteered) |", "|---|---|---|---|---|"]
        for env in envs:
            per_seed = {}
            for method in ("unsteered", "discriminator", "rrf"):
                scores = [method_scores(episodes, env, method, [m]) for m in model_seeds]
                per_seed[method] = np.array([x.mean() for x in scores if len(x)])
            agg = iqm({m: v for m, v in per_seed.items() if len(v)})
            for method, v in per_seed.items():
                if not len(v):
                    continue
                poi = ("—" if method == "unsteered" else
                       probability_of_improvement(v, per_seed["unsteered"]).format())
                lines.append(f"| {env} | {method} | {', '.join(f'{x:.2f}' for x in v)} | {agg[method].format()} | "
                             f"{poi} |")
    lines += ["", "## Every selection setting", "", "Mean ± standard error over the selection rollouts; "
              "**bold**: the chosen setting.", "",
              "| env | method | model seed | ω | t_stopgrad | selection score | episodes |", "|---|---|---|---|---|---|---|"]
    for s in sorted(selection.values(), key=lambda s: (s.env, s.method, s.model_seed, s.omega, s.t_stopgrad)):
        c = chosen.get(s.key)
        bold = "**" if c is not None and (c.omega, c.t_stopgrad) == (s.omega, s.t_stopgrad) else ""
        lines.append(f"| {s.env} | {s.method} | {s.model_seed} | {bold}{s.omega:g}{bold} | {s.t_stopgrad} | "
                     f"{bold}{s.mean:.2f} ± {s.se:.2f}{bold} | {len(s.scores)} |")
    lines += transfer_lines(results)
    if problems:
        lines += ["", f"## Trials without a result ({len(problems)})", ""]
        lines += [f"- {p['trial_id']}: {p.get('status')}" + (f" — {p['error']}" if p.get("error") else "")
                  for p in problems]
    lines += ["", "![score against ω](figures/score_vs_omega.png)", "",
              "Selection score against ω at each ω's best t_stopgrad; the dashed line is the unsteered report "
              "score."]
    return "\n".join(lines) + "\n"


def plot_score_vs_omega(results: list[dict], path) -> Path:
    """One panel per environment: each steered method's selection score against ω (best t_stopgrad per ω,
    model seeds pooled) and the unsteered planner's report score."""
    from matplotlib.figure import Figure

    from rrf_ray.engine.report import save_figure_atomic

    table = pooled_settings(results, SELECTION)
    episodes = report_episodes(results)
    envs = sorted({s.env for s in table.values()} | {k[0] for k in episodes}) or ["(no results)"]
    fig = Figure(figsize=(4.2 * len(envs), 3.4))
    for i, env in enumerate(envs):
        ax = fig.add_subplot(1, len(envs), i + 1)
        for method, colour in (("discriminator", "tab:orange"), ("rrf", "tab:blue")):
            by_setting: dict[tuple, list] = {}
            for s in table.values():
                if s.env == env and s.method == method:
                    by_setting.setdefault((s.omega, s.t_stopgrad), []).append(s.scores)
            per_omega: dict[float, Setting] = {}
            for (w, t), parts in by_setting.items():
                s = Setting(env, method, -1, w, t, np.concatenate(parts))
                if w not in per_omega or s.mean > per_omega[w].mean:
                    per_omega[w] = s
            if per_omega:
                omegas = sorted(per_omega)
                ax.errorbar(omegas, [per_omega[w].mean for w in omegas], yerr=[per_omega[w].se for w in omegas],
                            marker="o", capsize=3, color=colour, label=METHOD_NAMES[method] + " (selection)")
        base = method_scores(episodes, env, "unsteered")
        if len(base):
            ax.axhline(float(base.mean()), color="grey", linestyle="--", label=METHOD_NAMES["unsteered"] + " (report)")
        ax.set_title(env)
        ax.set_xscale("symlog", linthresh=min([s.omega for s in table.values()] or [1.0]))
        ax.set_xlabel("guidance scale ω")
        ax.set_ylabel("D4RL-normalised score")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def write_csv(results: list[dict], problems: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in results + [p for p in problems if p.get("status") == "missing"]:
        m = r.get("metrics") or {}
        w.writerow({**{k: r.get(k) for k in CSV_FIELDS}, **{k: m.get(k) for k in CSV_FIELDS if k in m},
                    "seeds": " ".join(map(str, r.get("seeds", []))), "error": r.get("error")})
    return buf.getvalue()


def write_locomotion_report(sweep_dir) -> Path:
    sweep_dir = Path(sweep_dir)
    results, problems = load_results(sweep_dir)
    scores_file = sweep_dir / "data_scores.json"
    data = json.loads(scores_file.read_text()) if scores_file.exists() else None
    write_atomic(sweep_dir / "report.md", markdown(results, problems, sweep_dir.name, data, _spec(sweep_dir)))
    write_atomic(sweep_dir / "results.csv", write_csv(results, problems))
    plot_score_vs_omega(results, sweep_dir / "figures" / "score_vs_omega.png")
    from rrf_ray.engine.report import write_html_report

    write_html_report(sweep_dir / "report.md")
    return sweep_dir / "report.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rrf_ray.locomotion.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir")
    args = p.parse_args(argv)
    if not (Path(args.sweep_dir) / "trials.json").exists():
        print(f"error: {args.sweep_dir} has no trials.json; is it a locomotion sweep directory?", file=sys.stderr)
        return 2
    print(write_locomotion_report(args.sweep_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
