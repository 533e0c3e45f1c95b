"""The locomotion protocol (docs/method.md, Protocol): settings chosen on selection rollouts, Table 1 from fresh report
rollouts, steered vs unsteered as a paired difference. Planted results, no rollouts: the report's logic alone."""

import numpy as np
import pytest

from rrf_ray.engine.loading import load_spec
from rrf_ray.locomotion.report import markdown, report_episodes
from rrf_ray.locomotion.selection import base_seed_of, chosen_settings
from rrf_ray.locomotion.stages import report_table, selection_table, transfer_table
from rrf_ray.metrics.aggregate import paired_difference

N = 64


def _result(method, omega, t, phase, seed, scores, model_seed=0, status="ok"):
    return {"trial_id": f"{method}-{omega}-{t}-{phase}{seed}-m{model_seed}", "env": "halfcheetah", "method": method,
            "omega": omega, "t_stopgrad": t, "model_seed": model_seed, "phase": phase, "seeds": [seed],
            "status": status, "metrics": None if status != "ok" else {"scores": list(map(float, scores))}}


def planted(rng):
    """omega 5 is best on the selection rollouts only (a lucky draw); omega 1 is better on fresh rollouts."""
    noise = rng.normal(0, 1, N)  # shared by every report rollout: same starts, same noise
    return [
        _result("rrf", 1.0, 2, "selection", 0, 10 + rng.normal(0, 1, N)),
        _result("rrf", 5.0, 2, "selection", 0, 14 + rng.normal(0, 1, N)),
        _result("discriminator", 1.0, 2, "selection", 0, 9 + rng.normal(0, 1, N)),
        _result("unsteered", 0.0, 0, "report", 1, 8 + noise),
        _result("rrf", 5.0, 2, "report", 1, 7 + noise + rng.normal(0, 0.1, N)),   # the chosen one, reported
        _result("rrf", 1.0, 2, "report", 1, 20 + noise),                          # not chosen: must not appear
        _result("discriminator", 1.0, 2, "report", 1, 9 + noise + rng.normal(0, 0.1, N)),
    ]


def test_the_table_reports_the_report_score_of_the_setting_chosen_on_selection_rollouts():
    results = planted(np.random.default_rng(0))
    chosen = chosen_settings(results)
    assert chosen["halfcheetah", "rrf", 0].omega == 5.0  # best on selection...
    text = markdown(results, [], "planted")
    row = next(line for line in text.splitlines() if line.startswith("| halfcheetah |"))
    cells = [c.strip() for c in row.split("|")]
    rrf_report = np.asarray(results[4]["metrics"]["scores"])
    assert cells[5].startswith(f"{rrf_report.mean():.2f} [")  # ...and Table 1 shows its fresh score (about 7),
    assert not cells[5].startswith("20.") and not cells[5].startswith("14.")  # not omega 1's nor its selection score
    episodes = report_episodes(results)
    assert ("halfcheetah", "rrf", 0, 1) in episodes
    np.testing.assert_array_equal(episodes["halfcheetah", "rrf", 0, 1], rrf_report)


def test_steered_minus_unsteered_is_paired_and_its_interval_can_exclude_zero():
    results = planted(np.random.default_rng(1))
    text = markdown(results, [], "planted")
    unsteered = np.asarray(results[3]["metrics"]["scores"])
    disc = np.asarray(results[6]["metrics"]["scores"])
    d = paired_difference(disc, unsteered)
    # the shared noise cancels: a gain of 1 with per-episode noise 1 is resolved to about ±0.03, not ±0.35
    assert d.low > 0.9 and d.high < 1.1 and d.excludes_zero
    line = next(x for x in text.splitlines() if x.startswith("| halfcheetah | discriminator | 0 |"))
    assert d.format() in line and line.rstrip().endswith("| yes |")
    line = next(x for x in text.splitlines() if x.startswith("| halfcheetah | rrf | 0 |"))
    assert "5 / 2" in line and line.rstrip().endswith("| yes |")  # the chosen rrf loses by 1: also resolved


def test_a_failed_selection_trial_is_no_candidate_and_is_listed():
    results = planted(np.random.default_rng(2))
    results[1] = _result("rrf", 5.0, 2, "selection", 0, [], status="failed")
    assert chosen_settings(results)["halfcheetah", "rrf", 0].omega == 1.0
    problems = [results[1]]
    text = markdown(results, problems, "planted")
    assert "## Trials without a result (1)" in text and results[1]["trial_id"] in text


def test_several_model_seeds_get_rliable_aggregates():
    rng = np.random.default_rng(3)
    results = []
    for m in (0, 1, 2):
        noise = rng.normal(0, 1, N)
        results += [_result("rrf", 1.0, 2, "selection", 0, 10 + rng.normal(0, 1, N), model_seed=m),
                    _result("unsteered", 0.0, 0, "report", 1, 8 + m + noise, model_seed=m),
                    _result("rrf", 1.0, 2, "report", 1, 9 + m + noise, model_seed=m)]
    text = markdown(results, [], "seeds")
    assert "## Across model seeds (rliable)" in text
    section = text.split("## Across model seeds (rliable)")[1].split("##")[0]
    line = next(x for x in section.splitlines() if x.startswith("| halfcheetah | rrf |"))
    assert line.count("[") == 2 and line.count(",") >= 2  # per-seed means, IQM [interval], P(improvement) [interval]
    assert any(x.startswith("| halfcheetah | rrf | all |") for x in text.splitlines())  # pooled paired row


def test_grids_hold_no_omega_zero_and_report_rows_follow_the_choice():
    spec = load_spec("locomotion-tiny", ["seeds=[0, 1]"])
    rows = selection_table(spec)
    assert rows and all(r["omega"] > 0 and r["phase"] == "selection" for r in rows)
    assert {r["seeds"][0] for r in rows} == set(spec.search.selection_seeds)
    results = [_result(r["method"], r["omega"], r["t_stopgrad"], "selection", r["seeds"][0],
                       [r["omega"] if r["model_seed"] == 0 else -r["omega"]], model_seed=r["model_seed"]) for r in rows]
    report = report_table(spec, chosen_settings(results))
    steered = {(r["method"], r["model_seed"]): r["omega"] for r in report if r["method"] != "unsteered"}
    assert steered == {("rrf", 0): 2.0, ("discriminator", 0): 2.0, ("rrf", 1): 0.5, ("discriminator", 1): 0.5}
    assert {r["seeds"][0] for r in report} == set(spec.search.report_seeds)
    assert sum(r["method"] == "unsteered" for r in report) == 2  # one per model seed


def test_transfer_steers_other_bases_at_each_model_seeds_choice_paired_with_the_same_base():
    spec = load_spec("locomotion-tiny", ["seeds=[0, 1]", "transfer_seeds=[7]"])
    rows = selection_table(spec)
    results = [_result(r["method"], r["omega"], r["t_stopgrad"], "selection", r["seeds"][0],
                       [r["omega"] if r["model_seed"] == 0 else -r["omega"]], model_seed=r["model_seed"]) for r in rows]
    transfer = transfer_table(spec, chosen_settings(results))
    assert {r["phase"] for r in transfer} == {"transfer"} and {r["seeds"][0] for r in transfer} == {1}
    unsteered = [r for r in transfer if r["method"] == "unsteered"]
    assert len(unsteered) == 1 and base_seed_of(unsteered[0]) == 7 == unsteered[0]["model_seed"]
    steered = {(r["method"], r["model_seed"]): (r["omega"], base_seed_of(r)) for r in transfer
               if r["method"] != "unsteered"}  # each model seed's own choice, never re-tuned, on base 7
    assert steered == {("rrf", 0): (2.0, 7), ("discriminator", 0): (2.0, 7), ("rrf", 1): (0.5, 7),
                       ("discriminator", 1): (0.5, 7)}
    assert len({r["trial_id"] for r in transfer}) == len(transfer)
    assert not {r["trial_id"] for r in transfer} & {r["trial_id"] for r in report_table(spec, chosen_settings(results))}

    # the table pairs each guide's rollouts with base 7's unsteered ones: a planted gain of 1 under shared noise
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 1, N)
    planted_rows = {("unsteered", 7): 8.0, ("rrf", 0): 9.0, ("rrf", 1): 7.0}
    for r in transfer:
        key = (r["method"], r["model_seed"])
        if key in planted_rows:
            scores = planted_rows[key] + noise + (0 if key[0] == "unsteered" else rng.normal(0, 0.05, N))
            results.append({**_result(r["method"], r["omega"], r["t_stopgrad"], "transfer", 1, scores,
                                      model_seed=r["model_seed"]), "base_seed": r.get("base_seed")})
    text = markdown(results, [], "planted", spec=spec)
    assert "## Transfer to base diffusers of other seeds" in text and "**Transfer:** base diffusers of seeds [7]" in text
    gain = next(x for x in text.splitlines() if x.startswith("| halfcheetah | 7 | rrf | 0 |"))
    loss = next(x for x in text.splitlines() if x.startswith("| halfcheetah | 7 | rrf | 1 |"))
    assert gain.rstrip().endswith("| yes |") and "| 1.0" in gain
    assert loss.rstrip().endswith("| yes |") and "| -1.0" in loss
    assert "33.06" in text  # the paper's Table 2 beside it
    assert not any(x.startswith("| halfcheetah | 7 | discriminator |") for x in text.splitlines())  # no results: no row


def test_transfer_seeds_must_be_new_bases():
    from rrf_ray.engine.spec import ConfigError

    with pytest.raises(ConfigError, match="transfer_seeds"):
        load_spec("locomotion-tiny", ["seeds=[0, 1]", "transfer_seeds=[1]"])
