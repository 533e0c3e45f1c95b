"""Locomotion report: Table 1 of the paper (unsteered, discriminator, relative reward) and score vs omega.

Rebuilt from the sweep directory's files alone (trials.json and trials/*/result.json), so it
can be made while a sweep runs or after it died; missing and failed grid trials are listed.
Scores of a setting (environment, method, omega, t_stopgrad) pool every episode of every
seed: mean ± standard error over episodes. A steered method's row is its best setting by
mean score (as the paper chose its omega and t_stopgrad; this is selection on the same
rollouts, so it is optimistic).

Usage: python -m rrf_ray.locomotion.report SWEEP_DIR   (report.md, results.csv, figures/score_vs_omega.png)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rrf_ray.engine.atomic import write_atomic
from rrf_ray.metrics.intervals import standard_error

# SPEC section 5: the paper's Table 1 (unsteered, discriminator, relative reward).
PAPER_TABLE1 = {"halfcheetah": (30.38, 30.41, 31.65), "hopper": (24.67, 25.12, 27.04),
                "walker2d": (28.20, 27.98, 38.40)}
METHOD_NAMES = {"unsteered": "Unsteered", "discriminator": "Discriminator", "rrf": "Relative reward (ours)"}
CSV_FIELDS = ["trial_id", "env", "method", "omega", "t_stopgrad", "seeds", "status", "score", "score_se",
              "return_mean", "length_mean", "n_episodes", "rollout_s", "error"]


@dataclass
class Setting:
    env: str
    method: str
    omega: float
    t_stopgrad: int
    scores: np.ndarray  # every episode of every seed

    @property
    def mean(self) -> float:
        return float(self.scores.mean())

    @property
    def se(self) -> float:
        return standard_error(self.scores)


def load_results(sweep_dir) -> tuple[list[dict], list[dict]]:
    """(every result.json found, expected grid trials without an ok result, marked missing or failed)."""
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


def settings(results: list[dict]) -> dict[tuple, Setting]:
    """(env, method, omega, t_stopgrad) -> pooled episode scores of its ok trials."""
    pooled = defaultdict(list)
    for r in results:
        if r.get("status") == "ok":
            key = (r["env"], r["method"], float(r["omega"]), int(r["t_stopgrad"]))
            pooled[key].extend(r["metrics"]["scores"])
    return {k: Setting(*k, np.asarray(v, dtype=np.float64)) for k, v in pooled.items()}


def best_settings(table: dict[tuple, Setting]) -> dict[tuple[str, str], Setting]:
    best = {}
    for s in table.values():
        cur = best.get((s.env, s.method))
        if cur is None or s.mean > cur.mean:
            best[(s.env, s.method)] = s
    return best


def _cell(s: Setting | None, with_setting: bool) -> str:
    if s is None:
        return "—"
    text = f"{s.mean:.2f} ± {s.se:.2f}"
    return text + (f" (ω {s.omega:g}, t_stop {s.t_stopgrad})" if with_setting else "")


def env_key(results: list[dict], env: str) -> str:
    return env.split("-")[0].lower()


def _data_cell(scores: dict | None) -> str:
    return "—" if not scores else f"{scores['score']:.2f} ± {scores['score_se']:.2f}"


def markdown(results: list[dict], problems: list[dict], sweep_name: str, data: dict | None = None) -> str:
    """`data`: the base and expert data's own scores per environment (data_scores.json), if known."""
    table = settings(results)
    best = best_settings(table)
    data = data or {}
    envs = sorted({s.env for s in table.values()})
    steps = sorted({r["steps"] for d in data.values() for r in d.values()})
    lines = [f"# Locomotion steering: {sweep_name}", "",
             "D4RL-normalised score, mean ± standard error over every rollout of every seed; a steered "
             "method's entry is its best (ω, t_stopgrad) by mean score. The data columns score the episodes "
             "the base and the expert were trained on the same way"
             + (f", over their first {', '.join(map(str, steps))} steps (the rollouts' length)" if steps else "")
             + ": where the planner sits between them.", "",
             "| Environment | Base data | Unsteered | Discriminator | Relative reward (ours) | "
             "best ω / t_stopgrad (ours) | Expert data | Paper (unsteered / discriminator / RRF) |",
             "|---|---|---|---|---|---|---|---|"]
    for env in envs:
        u, d, r = (best.get((env, m)) for m in ("unsteered", "discriminator", "rrf"))
        paper = PAPER_TABLE1.get(env_key(results, env))
        scores = data.get(env, {})
        lines.append(f"| {env} | {_data_cell(scores.get('base'))} | {_cell(u, False)} | {_cell(d, True)} | "
                     f"{_cell(r, False)} | {'—' if r is None else f'{r.omega:g} / {r.t_stopgrad}'} | "
                     f"{_data_cell(scores.get('expert'))} | "
                     f"{'—' if paper is None else ' / '.join(f'{v:.2f}' for v in paper)} |")
    lines += ["", "## Every setting", "", "| env | method | ω | t_stopgrad | score | episodes |", "|---|---|---|---|---|---|"]
    for s in sorted(table.values(), key=lambda s: (s.env, s.method, s.omega, s.t_stopgrad)):
        lines.append(f"| {s.env} | {s.method} | {s.omega:g} | {s.t_stopgrad} | {s.mean:.2f} ± {s.se:.2f} | "
                     f"{len(s.scores)} |")
    if problems:
        lines += ["", f"## Trials without a result ({len(problems)})", ""]
        lines += [f"- {p['trial_id']}: {p.get('status')}" + (f" — {p['error']}" if p.get("error") else "")
                  for p in problems]
    lines += ["", "Figure: figures/score_vs_omega.png (score against ω at each ω's best t_stopgrad; "
              "the dashed line is the unsteered score)."]
    return "\n".join(lines) + "\n"


def plot_score_vs_omega(results: list[dict], path) -> Path:
    """One panel per environment: each steered method's score against ω (best t_stopgrad per ω)."""
    from matplotlib.figure import Figure

    from rrf_ray.engine.report import save_figure_atomic

    table = settings(results)
    envs = sorted({s.env for s in table.values()}) or ["(no results)"]
    fig = Figure(figsize=(4.2 * len(envs), 3.4))
    for i, env in enumerate(envs):
        ax = fig.add_subplot(1, len(envs), i + 1)
        for method, colour in (("discriminator", "tab:orange"), ("rrf", "tab:blue")):
            per_omega = {}
            for s in table.values():
                if s.env == env and s.method == method:
                    if s.omega not in per_omega or s.mean > per_omega[s.omega].mean:
                        per_omega[s.omega] = s
            if per_omega:
                omegas = sorted(per_omega)
                ax.errorbar(omegas, [per_omega[w].mean for w in omegas], yerr=[per_omega[w].se for w in omegas],
                            marker="o", capsize=3, color=colour, label=METHOD_NAMES[method])
        base = [s for s in table.values() if s.env == env and s.method == "unsteered"]
        if base:
            ax.axhline(base[0].mean, color="grey", linestyle="--", label=METHOD_NAMES["unsteered"])
        ax.set_title(env)
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
    write_atomic(sweep_dir / "report.md", markdown(results, problems, sweep_dir.name, data))
    write_atomic(sweep_dir / "results.csv", write_csv(results, problems))
    plot_score_vs_omega(results, sweep_dir / "figures" / "score_vs_omega.png")
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
