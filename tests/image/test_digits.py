"""The digits pipeline (rrf_ray.image.digits), trained here by the CLI (tiny preset, once per session):
diffusers loads it and draws the prompted digit, the judge knows digits it never saw fitted,
reruns reuse the build, and the prompts files invite each concept about half the time."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory only: never the hub

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tensors: a second thread only spins

from rrf_ray.engine.spec import ConfigError  # noqa: E402
from rrf_ray.image.digits import (  # noqa: E402
    DIGIT_WORDS, HOLDOUT_FILE, TEMPLATES, DigitJudge, DigitsPipelineSettings, build_digits_pipeline, byte_tokenizer,
    caption, concept_caption, neighbours, split_digits)

# The tiny build's images must show the prompted digit this often (chance: 0.1). Measured with this
# test's generation (DDIM 20 steps, guidance 4) on build seeds 0-4 of the tiny preset (600 steps):
# these 40 images 0.75, 1.0, 0.825, 0.95, 0.95; 200 others 0.755, 0.92, 0.80, 0.985, 0.925. 0.5
# leaves the weakest seed ~3.5 standard errors of a 40-image estimate.
MIN_SAMPLE_ACCURACY = 0.5


def test_pipeline_loads_in_diffusers_and_draws_the_prompted_digit(digits_pipeline):
    import torch
    from diffusers import StableDiffusionPipeline

    from rrf_ray.image.pipeline import load_components

    pipe = StableDiffusionPipeline.from_pretrained(digits_pipeline, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    per_digit = 4
    prompts = [concept_caption(d) for d in range(10) for _ in range(per_digit)]
    images = pipe(prompts, height=16, width=16, num_inference_steps=20, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (40, 16, 16, 3)
    judge = DigitJudge.from_pipeline(digits_pipeline)
    predicted = judge.predict((images * 255).round().astype(np.uint8))
    accuracy = float((predicted == np.repeat(np.arange(10), per_digit)).mean())
    assert accuracy > MIN_SAMPLE_ACCURACY, f"the judge named the prompted digit in {accuracy:.0%} of images"
    # the image experiment's loader takes it as any SD directory
    c = load_components(str(digits_pipeline))
    assert c.latent_channels == 4 and c.tokenizer.model_max_length == 32


def test_judge_is_accurate_and_fitted_only_on_the_holdout(digits_pipeline, tmp_path):
    summary = json.loads((digits_pipeline / "digits.json").read_text())
    judge = DigitJudge.from_pipeline(digits_pipeline)
    assert judge.accuracy > 0.9
    assert judge.accuracy == pytest.approx(summary["judge"]["holdout_accuracy"])
    # holdout.npz alone makes the same judge: nothing else (no generated image) is read
    (tmp_path / HOLDOUT_FILE).write_bytes((digits_pipeline / HOLDOUT_FILE).read_bytes())
    assert DigitJudge.from_pipeline(tmp_path).accuracy == judge.accuracy
    # the holdout is exactly what training left out, stratified
    settings = DigitsPipelineSettings.model_validate(summary["settings"])
    split = split_digits(settings)
    with np.load(digits_pipeline / HOLDOUT_FILE) as f:
        index, labels, n_fit = f["index"], f["labels"], int(f["n_fit"])
    assert len(index) == summary["data"]["holdout"] == len(set(index.tolist()))
    assert len(index) + summary["data"]["train"] == 1797
    np.testing.assert_array_equal(index, split.holdout_index)
    assert np.bincount(labels, minlength=10).min() >= 30 and n_fit == summary["judge"]["fit"]
    # probabilities of real digits drawn as the pipeline draws them
    from rrf_ray.image.digits import render, to_uint8

    with np.load(digits_pipeline / HOLDOUT_FILE) as f:
        real = to_uint8(render(f["images"][n_fit:], 16))
        truth = f["labels"][n_fit:]
    p = judge.probabilities(real)
    assert p.shape == (len(real), 10) and np.allclose(p.sum(1), 1)
    np.testing.assert_allclose(judge.concept_probability(real, 3), p[:, 3])
    # calibrated, not saturated: measured 0.66 for real threes against 0.034 for the other digits
    threes, others = judge.concept_probability(real[truth == 3], 3), judge.concept_probability(real[truth != 3], 3)
    assert threes.mean() > 0.5 and threes.mean() > 5 * others.mean(), (threes.mean(), others.mean())


def test_rerun_reuses_the_build_and_other_settings_need_overwrite(digits_pipeline, digits_cli):
    files = {p: p.stat().st_mtime_ns for p in digits_pipeline.rglob("*") if p.is_file()}
    start = time.time()
    again = digits_cli("--out", str(digits_pipeline), "--preset", "tiny", "--threads", "1")
    assert again.returncode == 0, again.stderr
    assert "reused" in again.stdout and time.time() - start < 60
    assert {p: p.stat().st_mtime_ns for p in digits_pipeline.rglob("*") if p.is_file()} == files
    other = digits_cli("--out", str(digits_pipeline), "--preset", "tiny", "--seed", "1")
    assert other.returncode == 2
    assert "--overwrite" in other.stderr and "seed" in other.stderr
    bad = digits_cli("--out", str(digits_pipeline), "--preset", "huge")
    assert bad.returncode == 2 and "--preset" in bad.stderr


def test_prompts_invite_the_concept_about_half_the_time(digits_pipeline):
    summary = json.loads((digits_pipeline / "digits.json").read_text())
    split = split_digits(DigitsPipelineSettings.model_validate(summary["settings"]))
    near = neighbours(split.train_images, split.train_labels)  # from the training images, recomputed
    all_captions = {caption(d, k): d for d in range(10) for k in range(len(TEMPLATES))}
    for d in range(10):
        lines = (digits_pipeline / "prompts" / f"{d}.txt").read_text().splitlines()
        assert lines and all(line in all_captions for line in lines)
        assert concept_caption(d) not in lines  # SLD does nothing when prompt == concept
        assert {caption(d, k) for k in range(1, len(TEMPLATES))} <= set(lines)
        assert near[d]["confusable"] == summary["neighbours"][str(d)]["confusable"]
        inviting = [line for line in lines if all_captions[line] in {d, *near[d]["confusable"]}]
        assert 0.4 <= len(inviting) / len(lines) <= 0.6
        assert len(set(lines)) == len(lines)


def test_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    """A build that stops part-way (here: captions longer than max_length) leaves no --out and no temporary."""
    out = tmp_path / "pipeline"
    settings = DigitsPipelineSettings.preset("tiny", max_length=12)
    with pytest.raises(ConfigError, match="max_length"):
        build_digits_pipeline(out, settings, progress=False)
    assert list(tmp_path.iterdir()) == []
    # a directory that is not a digits pipeline is never replaced, even with overwrite
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no digits pipeline"):
        build_digits_pipeline(out, DigitsPipelineSettings.preset("tiny"), progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_byte_tokenizer_fits_every_caption(tmp_path):
    tokenizer = byte_tokenizer(tmp_path / "tok", max_length=32)
    longest = max(len(tokenizer(caption(d, k)).input_ids) for d in range(10) for k in range(len(TEMPLATES)))
    assert longest <= 32
    assert tokenizer.decode(tokenizer(concept_caption(7)).input_ids, skip_special_tokens=True) == "a handwritten seven"
    assert [concept_caption(d) for d in range(10)] == [f"a handwritten {w}" for w in DIGIT_WORDS]
    with pytest.raises(ConfigError, match="preset"):
        DigitsPipelineSettings.preset("huge")


def test_pairs_count_where_sld_changed_the_digit_and_how_the_reward_ranks_the_twins():
    from rrf_ray.image.evaluate import judged_concept

    # chains 0-3, SD then SD+SLD; SLD turned chain 0's and 1's zeros into a six and a nine
    finals = {"kind": np.array([1, 1, 1, 1, 2, 2, 2, 2]), "chain_id": np.array([0, 1, 2, 3, 0, 1, 2, 3])}
    judged = np.array([0, 0, 5, 7, 6, 9, 5, 7])
    concept = np.where(judged == 0, 0.9, 0.05)
    rewards = np.array([0.1, 0.5, 0.2, 0.3, 0.4, 0.2, 0.25, 0.1])  # chain 0: SLD's above; chain 1: below
    m = judged_concept(rewards, finals, concept, judged, digit=0)
    assert (m["pairs"], m["pairs_digit_changed"], m["concept_pairs"]) == (4, 2, 2)
    assert m["concept_pairs_expert_ranked_above"] == 1 and m["pairs_expert_ranked_above"] == 2
    assert (m["concept_base"], m["concept_expert"]) == (2, 0)
