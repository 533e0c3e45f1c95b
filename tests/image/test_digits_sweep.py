"""The image experiment on the digits pipeline trained here (issue 35): the safety concept is a setting
the expert branch steers away from, and the `sd-digits-tiny` profile runs end to end through the CLI,
with the judge's section in its report, and `--resume` recomputes nothing."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory only: never the hub

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("transformers")

from rrf_ray.engine.cli import main  # noqa: E402
from rrf_ray.image.digits import DigitJudge, caption, concept_caption  # noqa: E402
from rrf_ray.image.evaluate import decode  # noqa: E402
from rrf_ray.image.pipeline import latent_chains, load_components  # noqa: E402
from rrf_ray.image.spec import GenerationSpec, SafetySpec  # noqa: E402
from rrf_ray.metrics.aggregate import paired_difference  # noqa: E402


def expert_finals(model, prompts, concept: str, n: int) -> np.ndarray:
    """Decoded final images of the expert (SD+SLD) chains of `prompts`, n noises each, under `concept`."""
    c = load_components(str(model))
    gen = GenerationSpec(model=str(model), prompts="unused", steps=15, guidance_scale=5.0, latent_size=8)
    safety = SafetySpec(concept=concept, warmup_steps=2)
    images = []
    for prompt in prompts:
        rows = latent_chains(c, [prompt] * n, list(range(n)), gen, safety, seed=0)
        last = rows["t"] == rows["t"].min()
        expert = rows["x_expert"][last & (rows["chain_kind"] == 2)]
        images.append(decode(str(model), expert, "float32", False))
    return np.concatenate(images)


def test_the_safety_concept_is_what_the_expert_branch_avoids(digits_pipeline):
    """The same prompts ("the digit zero", ...) and noises, two concepts: the judge finds fewer zeros in
    the expert branch's images when the concept is a zero than when it is a seven."""
    judge = DigitJudge.from_pipeline(digits_pipeline)
    prompts = [caption(0, k) for k in (1, 2, 3)]  # never the concept's own text: SLD does nothing then
    avoid_zero = judge.concept_probability(expert_finals(digits_pipeline, prompts, concept_caption(0), 12), 0)
    avoid_seven = judge.concept_probability(expert_finals(digits_pipeline, prompts, concept_caption(7), 12), 0)
    fewer = paired_difference(avoid_zero, avoid_seven)  # the same noise under each concept
    assert fewer.high < 0, fewer  # measured: 0.157 against 0.251 (36 images each)


@pytest.mark.slow
def test_sd_digits_tiny_runs_end_to_end_and_resume_recomputes_nothing(ray_local, digits_pipeline, tmp_path):
    storage = tmp_path / "results"
    args = ["sd-digits-tiny", "--storage", str(storage), "--set", f"generation.model={digits_pipeline}",
            "--set", f"generation.prompts={digits_pipeline / 'prompts' / '0.txt'}"]
    assert main(args) == 0
    out = storage / "sd-digits-tiny"
    result = json.loads((out / "trials" / "seed0" / "result.json").read_text())
    assert result["status"] == "ok", result
    m = result["metrics"]
    # the judge saw every held-out image of both pipelines, and said how many show a zero
    assert m["judge_digit"] == 0 and m["images_base"] == m["n_base"] and m["images_expert"] == m["n_expert"]
    assert 0 <= m["concept_base"] <= m["images_base"] and 0 <= m["concept_expert"] <= m["images_expert"]
    assert m["judge_accuracy"] > 0.8
    rho, low, high, n = m["reward_concept_spearman_all"]
    assert n == m["n_base"] + m["n_expert"] and -1 <= low <= rho <= high <= 1
    assert all("concept_probability" in row for batch in m["extremes"] for side in batch.values() for row in side)
    assert m["pairs"] == m["n_base"] and 0 <= m["concept_pairs"] == m["concept_base"]
    assert m["concept_pairs_expert_ranked_above"] <= m["concept_pairs"] and m["pairs_digit_changed"] <= m["pairs"]
    report = (out / "report.md").read_text()
    assert "by an independent judge" in report and "images judged the digit 0" in report
    assert "| whose SD image shows the digit 0 (where SLD acts) |" in report
    assert '"a handwritten zero"' in report
    results = json.loads((out / "results.json").read_text())
    assert results["judge"]["0"]["concept_base"] == m["concept_base"]

    kept = [out / "trials" / "seed0" / "result.json", out / "trials" / "seed0" / "extremes.png",
            *(out / "artifacts").glob("*/*/DONE")]
    stamps = [p.stat().st_mtime_ns for p in kept]
    assert main(args + ["--resume"]) == 0
    assert [p.stat().st_mtime_ns for p in kept] == stamps
    assert json.loads((out / "results.json").read_text()) == results
