"""The IRL report: protocol card first, per-seed values and across-seed IQMs with intervals per method x net,
failed trials and non-finite metrics counted and listed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rrf_ray.engine.loading import load_spec
from rrf_ray.irl.report import load_results, normalised_returns, summarise, write_report
from rrf_ray.irl.stages import trial_table


def fake_sweep(tmp_path, seeds=(0, 1, 2), failed=(), missing=(), nan_erc=()):
    """A sweep directory of irl-tiny at `seeds` with made-up results: base 100 + s, oracle 200 + s, every other
    method 150 + s + its index; learned rewards ERC 0.1 x (seed + 1), scale chosen from the candidates."""
    spec = load_spec("irl-tiny", [f"seeds={list(seeds)}"])
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "spec.json").write_text(spec.model_dump_json())
    trials = trial_table(spec)
    (root / "trials.json").write_text(json.dumps(trials))
    for i, t in enumerate(trials):
        if t["trial_id"] in missing:
            continue
        s = t["seed"]
        value = {"base": 100.0 + s, "true_reward": 200.0 + s}.get(t["method"], 150.0 + s + i)
        metrics = {"return_mean": value, "return_std": 5.0, "n_rollouts": 2}
        if spec.scores_reward(t["method"]):
            metrics.update(erc=float("nan") if t["trial_id"] in nan_erc else 0.1 * (s + 1))
            if spec.per_step(t["method"], t["net"]):
                metrics.update(epic=0.05 * (s + 1), starc=0.06 * (s + 1))
        if t["method"] in spec.selection.scales:
            metrics.update(guidance_scale=3.0, selection_candidates=spec.selection.scales[t["method"]][:2],
                           selection_distances=[0.4, 0.2], selection_unguided=0.5)
        result = ({"status": "failed", "error": "FloatingPointError: loss is nan", "metrics": None}
                  if t["trial_id"] in failed else {"status": "ok", "metrics": metrics})
        (root / "trials" / t["trial_id"]).mkdir(parents=True)
        (root / "trials" / t["trial_id"] / "result.json").write_text(json.dumps(result))
    return spec, root


def test_normalised_return_uses_each_seeds_base_and_oracle():
    rows = [{"method": "base", "seed": 0, "status": "ok", "return_mean": 100.0},
            {"method": "true_reward", "seed": 0, "status": "ok", "return_mean": 200.0},
            {"method": "irl_mse", "net": "plan", "seed": 0, "status": "ok", "return_mean": 180.0},
            {"method": "base", "seed": 1, "status": "ok", "return_mean": 50.0},
            {"method": "true_reward", "seed": 1, "status": "ok", "return_mean": 150.0},
            {"method": "irl_mse", "net": "plan", "seed": 1, "status": "ok", "return_mean": 75.0},
            {"method": "irl_mse", "net": "window", "seed": 1, "status": "ok", "return_mean": float("nan")}]
    norm = normalised_returns(rows)
    assert norm["irl_mse", "plan", 0] == pytest.approx(0.8) and norm["irl_mse", "plan", 1] == pytest.approx(0.25)
    assert norm["base", None, 0] == 0 and norm["true_reward", None, 1] == 1
    assert ("irl_mse", "window", 1) not in norm


def test_report_has_the_protocol_card_and_iqm_intervals_over_seeds(tmp_path):
    spec, root = fake_sweep(tmp_path)
    report = write_report(root, reps=200).read_text()
    card = report.index("## Protocol card")
    assert card < report.index("## Behaviour") < report.index("## Reward quality")
    for fact in ("**Seeds** [0, 1, 2]: each a whole run", "selection-only", "Selection criterion",
                 "held-out expert segment", "It reads neither the true reward nor the report rollouts",
                 "oracle (uses the true reward)", "re-plans every 1 step(s)", "**Normalisation**", "**ERC**",
                 "coverage set", "**Differs from the thesis**", "selection.seed + s = [2000, 2001, 2002]",
                 "environment seed 1000 + s", "**Nets** ['window', 'plan']"):
        assert fact in report, fact
    summary = {(s["method"], s["net"]): s for s in summarise(spec, load_results(root)[1], reps=200)}
    assert set(summary) == {("base", None), ("true_reward", None), ("bc", None), ("gail", None), ("airl", None),
                            ("airl_guided", None)} | {(m, n) for m in ("irl_mse", "rrf") for n in ("window", "plan")}
    # EPIC and STARC for the rewards of one state (window nets, AIRL's g), never for a plan net
    assert summary["rrf", "window"]["epic_iqm"].value == pytest.approx(0.1)
    assert summary["airl", None]["starc_iqm"].value == pytest.approx(0.12)
    assert not np.isfinite(summary["rrf", "plan"]["epic_iqm"].value) and not summary["rrf", "plan"]["per_step"]
    quality = report[report.index("## Reward quality"):]
    plan_row = next(x for x in quality.splitlines() if x.startswith("| Relative reward") and "| plan |" in x)
    assert "plan-level: ERC only" in plan_row
    window_row = next(x for x in quality.splitlines() if x.startswith("| Relative reward") and "| window |" in x)
    assert f"| {summary['rrf', 'window']['epic_iqm'].value:.3f} [" in window_row  # the EPIC IQM with an interval
    assert any(x.startswith("| AIRL") and "0.719" in x for x in quality.splitlines())  # the thesis's AIRL ERC
    assert "**EPIC and STARC**" in report
    rrf = summary["rrf", "plan"]
    assert rrf["normalised_iqm"].n == 3 and rrf["normalised_iqm"].low <= rrf["normalised_iqm"].value \
        <= rrf["normalised_iqm"].high and np.isfinite(rrf["normalised_iqm"].low)
    assert rrf["erc_iqm"].value == pytest.approx(0.2)  # IQM of 0.1, 0.2, 0.3
    assert rrf["p_improvement"].value == 1.0  # every seed's return beats every base seed's
    row = next(line for line in report.splitlines() if line.startswith("| Relative reward") and "| plan |" in line)
    assert rrf["normalised_iqm"].format() in row and "s0: " in row and "s2: " in row and "3/3" in row
    assert "selected: s0: 3, s1: 3, s2: 3" in row
    # both nets in the table, one row each for the methods without a net
    assert sum(line.startswith("| Algorithm 4, MSE |") for line in report.splitlines()) == 2 + 2  # behaviour + ERC
    assert sum(line.startswith("| Behaviour cloning |") for line in report.splitlines()) == 1
    assert "## Trials without a result: 0 of 30" in report
    csv = (root / "results.csv").read_text().splitlines()
    assert csv[0].startswith("trial_id,method,net,seed") and len(csv) == 31


def test_report_counts_and_lists_failed_trials_and_nan_metrics(tmp_path):
    spec, root = fake_sweep(tmp_path, seeds=(0, 1), failed=("irl_mse-window-seed1",), missing=("bc-seed0",),
                            nan_erc=("rrf-window-seed0",))
    report = write_report(root, reps=200).read_text()
    assert "## Trials without a result: 2 of 20" in report
    assert "- irl_mse-window-seed1: failed FloatingPointError: loss is nan" in report
    assert "- bc-seed0: missing" in report
    assert "## Non-finite metrics: 1" in report and "- rrf-window-seed0: erc" in report
    lines = report.splitlines()
    mse = next(x for x in lines if x.startswith("| Algorithm 4, MSE | window |"))
    assert "1/2, 1 failed" in mse
    bc = next(x for x in lines if x.startswith("| Behaviour cloning |"))
    assert "0/1" not in bc and "1/2, 1 failed" in bc
    erc_rows = [x for x in lines if x.startswith("| Relative reward") and "| window |" in x]
    assert any("s0: NaN" in x and "2/2, 1 NaN" in x for x in erc_rows)
    summary = {(s["method"], s["net"]): s for s in summarise(spec, load_results(root)[1], reps=200)}
    assert summary["rrf", "window"]["erc_iqm"].n == 1  # over the finite one, the NaN counted
    assert summary["irl_mse", "window"]["failed"] == ["irl_mse-window-seed1"]


def test_one_seed_gives_values_without_an_interval(tmp_path):
    spec, root = fake_sweep(tmp_path, seeds=(0,))
    report = write_report(root, reps=200).read_text()
    assert "(n = 1, no interval)" in report


def test_a_seed_whose_oracle_does_not_beat_its_base_gets_no_normalised_return(tmp_path):
    """Seed 1's oracle beats its base by 0.5 with rollout stds of 5 (2 rollouts each: standard error 5): a
    ratio there would divide by noise. Seed 1 has no normalised return, says so, and still counts in the
    return IQM and P(return > base)."""
    spec, root = fake_sweep(tmp_path, seeds=(0, 1))
    oracle = root / "trials" / "true_reward-seed1" / "result.json"
    result = json.loads(oracle.read_text())
    result["metrics"]["return_mean"] = 101.5  # base 101
    oracle.write_text(json.dumps(result))
    rows = load_results(root)[1]
    assert not any(seed == 1 for _, _, seed in normalised_returns(rows))
    summary = {(s["method"], s["net"]): s for s in summarise(spec, rows, reps=200)}
    rrf = summary["rrf", "plan"]
    assert rrf["normalised_iqm"].n == 1 and rrf["return_iqm"].n == 2 and rrf["nan_normalised"] == []
    report = write_report(root, reps=200).read_text()
    assert "**No normalised return for seed(s) 1**" in report and "R_oracle − R_base = 0.5 ± 5.0" in report
    row = next(x for x in report.splitlines() if x.startswith("| Relative reward") and "| plan |" in x)
    assert "s1: n/a" in row and rrf["return_iqm"].format(1) in row
