"""Choosing each steered method's (omega, t_stopgrad) on selection rollouts, and nothing else.

Both the rollout stage (which settings to roll out again on the report seeds) and the report (which
report rollouts make Table 1) call `chosen_settings`, so the two can never disagree. A setting's
selection score pools every episode of every selection seed; a setting with a failed or missing
selection trial is not a candidate (the report lists the trial). Ties go to the smaller omega, then
the smaller t_stopgrad: the gentler intervention.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from rrf_ray.metrics.intervals import standard_error

SELECTION, REPORT, TRANSFER = "selection", "report", "transfer"  # TRANSFER: report seeds, other base diffusers


def base_seed_of(row: dict) -> int:
    """The seed of the base diffuser a rollout trial planned with: its model seed unless a transfer row says."""
    b = row.get("base_seed")
    return int(row["model_seed"] if b is None else b)


@dataclass
class Setting:
    """One (environment, method, model seed, omega, t_stopgrad) and the pooled episode scores of one phase."""

    env: str
    method: str
    model_seed: int
    omega: float
    t_stopgrad: int
    scores: np.ndarray  # every episode of every rollout seed of the phase, in seed order

    @property
    def mean(self) -> float:
        return float(self.scores.mean()) if len(self.scores) else float("nan")

    @property
    def se(self) -> float:
        return standard_error(self.scores)

    @property
    def key(self) -> tuple:
        return self.env, self.method, self.model_seed


def pooled_settings(results: list[dict], phase: str) -> dict[tuple, Setting]:
    """(env, method, model_seed, omega, t_stopgrad) -> the episodes of its ok trials in `phase`, seeds in order."""
    pooled: dict[tuple, list] = defaultdict(list)
    for r in sorted(results, key=lambda r: list(r.get("seeds", []))):
        if r.get("status") == "ok" and r.get("phase") == phase:
            key = (r["env"], r["method"], int(r["model_seed"]), float(r["omega"]), int(r["t_stopgrad"]))
            pooled[key].extend(r["metrics"]["scores"])
    return {k: Setting(*k, np.asarray(v, dtype=np.float64)) for k, v in pooled.items()}


def chosen_settings(results: list[dict]) -> dict[tuple[str, str, int], Setting]:
    """(env, method, model_seed) -> the steered setting with the best mean selection score (its selection
    episodes attached). Settings whose selection score is not finite are never chosen."""
    best: dict[tuple, Setting] = {}
    for s in pooled_settings(results, SELECTION).values():
        if s.method == "unsteered" or not np.isfinite(s.mean):
            continue
        cur = best.get(s.key)
        if cur is None or (s.mean, -s.omega, -s.t_stopgrad) > (cur.mean, -cur.omega, -cur.t_stopgrad):
            best[s.key] = s
    return best
