"""The image experiment on a tiny random Stable Diffusion pipeline built here (nothing is downloaded):
the two-branch step against diffusers' own pipelines, then the sweep's Tune stages per seed
(generation -> shards, then reward -> evaluation) and its report."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory only: never the hub

import json  # noqa: E402

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

pytest.importorskip("transformers")

from tiny_sd import save_tiny_pipeline  # noqa: E402
from tolerances import assert_float32_close  # noqa: E402

from rrf_ray.engine.cli import main  # noqa: E402
from rrf_ray.image.pipeline import initial_latents, latent_chains, load_components  # noqa: E402
from rrf_ray.image.spec import GenerationSpec, SafetySpec  # noqa: E402
from rrf_ray.rrf.shards import verify_shards  # noqa: E402
from rrf_ray.rrf.spec import LatentRewardSpec  # noqa: E402

LATENT = 8  # 4x8x8 latents, 16x16 images
PROMPTS = ["a red cat on a sofa", "a city at night", "a bowl of fruit", "a dark forest", "an old man smiling",
           "a knife on a table", "two dogs playing", "a burning car", "a quiet lake", "a crowded street",
           "a portrait in oil", "a storm at sea"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(save_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd", latent_size=LATENT))


def gen_spec(model, **kw):
    base = dict(model=model, prompts="unused", steps=4, latent_size=LATENT, batch_size=4, prompts_per_shard=2,
                val_fraction=0.5)
    return GenerationSpec(**{**base, **kw})


def test_branches_follow_diffusers_sd_and_safe_sd(tiny_model):
    """Kind-2 chains step exactly as StableDiffusionPipelineSafe (DDIM), kind-1 as StableDiffusionPipeline."""
    import diffusers
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    # diffusers deprecated the Safe pipeline in 0.33.1; rrf_ray does not need it, only this reference does
    StableDiffusionPipelineSafe = getattr(diffusers, "StableDiffusionPipelineSafe", None)
    if StableDiffusionPipelineSafe is None:
        pytest.skip(f"diffusers {diffusers.__version__} no longer ships StableDiffusionPipelineSafe, the reference "
                    "the SLD branch is checked against")

    safety = SafetySpec(warmup_steps=1)
    gen = gen_spec(tiny_model)
    c = load_components(tiny_model)
    rows = latent_chains(c, ["a burning car"], [0], gen, safety, seed=3)
    x_t = initial_latents(c, [0], 3, LATENT)
    kind, t = rows["chain_kind"], rows["t"]
    steps = sorted(set(t.tolist()), reverse=True)
    safe = StableDiffusionPipelineSafe.from_pretrained(tiny_model, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    safe.scheduler = DDIMScheduler.from_config(safe.scheduler.config)
    seen = []
    safe("a burning car", height=2 * LATENT, width=2 * LATENT, num_inference_steps=4, latents=x_t.clone(),
         sld_guidance_scale=safety.guidance_scale, sld_warmup_steps=safety.warmup_steps,
         sld_threshold=safety.threshold, sld_momentum_scale=safety.momentum_scale, sld_mom_beta=safety.mom_beta,
         callback=lambda i, ts, latents: seen.append(latents.clone()), callback_steps=1)
    ours = [rows["x_expert"][(kind == 2) & (t == s)][0] for s in steps]
    # float32 UNet evaluations in another summation order: 128 ulps of the latents' scale (~8 here)
    assert_float32_close(np.stack(ours), torch.cat(seen).numpy())
    sd = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    final = sd("a burning car", height=2 * LATENT, width=2 * LATENT, num_inference_steps=4, latents=x_t.clone(),
               output_type="latent").images
    assert_float32_close(rows["x_base"][(kind == 1) & (t == steps[-1])][0], final[0].numpy())
    # the safety term changes the chain: the two pipelines' final latents differ
    assert not np.allclose(ours[-1], final[0].numpy(), atol=1e-3)


def test_branches_differ_only_where_safety_guidance_applies(tiny_model):
    c = load_components(tiny_model)
    gen = gen_spec(tiny_model, steps=5)
    rows = latent_chains(c, PROMPTS[:2], [0, 1], gen, SafetySpec(warmup_steps=2), seed=0)
    t = rows["t"]
    steps = sorted(set(t.tolist()), reverse=True)
    diff = np.abs(rows["x_expert"] - rows["x_base"]).reshape(len(t), -1).max(axis=1)
    warmup = np.isin(t, steps[:2])
    assert np.all(diff[warmup] == 0) and np.all(diff[~warmup] > 0)
    off = latent_chains(c, PROMPTS[:2], [0, 1], gen, SafetySpec(guidance_scale=0.0), seed=0)
    np.testing.assert_array_equal(off["x_expert"], off["x_base"])
    # each chain continues from the branch it follows; both kinds start from the same x_T
    kind, cid = rows["chain_kind"], rows["chain_id"]
    for k, col in ((1, "x_base"), (2, "x_expert")):
        now = np.flatnonzero((kind == k) & (t == steps[2]) & (cid == 1))[0]
        nxt = np.flatnonzero((kind == k) & (t == steps[3]) & (cid == 1))[0]
        np.testing.assert_array_equal(rows[col][now], rows["x_next"][nxt])
    first = [np.flatnonzero((kind == k) & (t == steps[0]) & (cid == 0))[0] for k in (1, 2)]
    np.testing.assert_array_equal(rows["x_next"][first[0]], rows["x_next"][first[1]])


def test_generation_writes_tensor_shards(ray_local, tiny_model, tmp_path):
    from rrf_ray.image.generate import generate_shards

    gen = gen_spec(tiny_model)
    manifest = generate_shards(tiny_model, PROMPTS[:4], tmp_path, gen, SafetySpec(warmup_steps=1), progress=False)
    assert manifest.sample_shape == (4, LATENT, LATENT)
    assert manifest.rows() == 4 * 2 * gen.steps and manifest.rows("val") == manifest.rows("train")
    verify_shards(tmp_path)
    table = pq.read_table(tmp_path / "shard-00000.parquet")
    assert str(table.schema.field("x_base").type).startswith("extension<arrow.fixed_shape_tensor")
    assert table["x_next"].combine_chunks().to_numpy_ndarray().shape == (16, 4, LATENT, LATENT)
    assert set(table["chain_kind"].to_numpy()) == {1, 2} and set(table["chain_id"].to_numpy()) == {0, 1}
    again = generate_shards(tiny_model, PROMPTS[:4], tmp_path, gen, SafetySpec(warmup_steps=1), progress=False)
    assert again.shards == manifest.shards  # intact shards are kept


def tiny_sweep_yaml(tmp_path, model, prompts_file, **reward):
    spec = {
        "name": "sd-tiny", "experiment": "image", "seeds": [0],
        "generation": {"model": model, "prompts": str(prompts_file), "steps": 6, "latent_size": LATENT,
                       "batch_size": 4, "prompts_per_shard": 4, "val_fraction": 0.34, "images_per_prompt": 2},
        "safety": {"warmup_steps": 1},
        "reward": {"unet_dim": 8, "unet_dim_mults": [1, 2], "hidden": [32], "learning_rate": 3e-3,
                   "batch_size": 32, "train_steps": 150, "checkpoint_every": 150, "log_every": 50,
                   "ema_decay": 0.9, "val_batches": 4, **reward},
        "evaluation": {"batch_size": 8, "show": 2, "max_batches": 2},
        "resources": {"cpus_per_worker": 1, "max_failures": 1},
    }
    path = tmp_path / "sd-tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def alignment_loss(net, table) -> float:
    from rrf_ray.rrf.reward_nets import alignment_terms

    batch = {k: torch.from_numpy(table[k].combine_chunks().to_numpy_ndarray()) for k in ("x_next", "x_base",
                                                                                          "x_expert")}
    batch["t"] = torch.from_numpy(table["t"].to_numpy())
    loss, _, _ = alignment_terms(net, batch, "cpu", create_graph=False)
    return loss.item()


@pytest.mark.slow
def test_sweep_cli_end_to_end_records_a_failed_seed_resumes_it_and_writes_the_report(ray_local, tiny_model,
                                                                                     tmp_path):
    from rrf_ray.rrf.reward_nets import build_reward_net, load_reward
    from rrf_ray.rrf.shards import Manifest

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,categories\n" + "".join(f'"{p}",x\n' for p in PROMPTS))
    spec = tiny_sweep_yaml(tmp_path, tiny_model, prompts)
    storage = tmp_path / "results"
    out = storage / "sd-tiny"
    trial = out / "trials" / "seed0"
    # the seed's trial fails after training its reward: a directory stands where its figure goes. (The
    # storage now holds something, so even this first run needs --resume.)
    (trial / "extremes.png").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="no seed trial finished"):
        main([str(spec), "--storage", str(storage), "--resume"])
    failed = json.loads((trial / "result.json").read_text())
    assert failed["status"] == "failed" and failed["metrics"] is None, failed
    assert "IsADirectoryError" in failed["error"] and "Traceback" in failed["traceback"]
    assert not (out / "report.md").exists()
    reward_done = next((out / "artifacts" / "rewards").iterdir()) / "DONE"
    trained_at = reward_done.stat().st_mtime_ns

    # --resume retries the failed trial: the reward is reused, its evaluation runs again
    (trial / "extremes.png").rmdir()
    assert main([str(spec), "--storage", str(storage), "--resume"]) == 0
    result = json.loads((trial / "result.json").read_text())
    assert result["status"] == "ok" and result["error"] is None and result["seed"] == 0
    assert reward_done.stat().st_mtime_ns == trained_at
    report = (out / "report.md").read_text()
    assert "ROC AUC" in report and "figures/extremes.png" in report and "Per seed" not in report
    image = mpimg.imread(out / "figures" / "extremes.png")
    assert image.ndim == 3 and image.shape[0] > 100
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["accuracy"] <= 1.0 and 0.0 <= results["auc"] <= 1.0
    assert results["n_base"] == results["n_expert"] == 4 * 2  # 4 held-out prompts x 2 images, each pipeline
    assert {k: results[k] for k in ("accuracy", "auc", "reward")} == \
        {k: result["metrics"][k] for k in ("accuracy", "auc", "reward")}
    # the trainer learned from the streamed shards: the alignment loss on the training triples fell
    # well below the same net's untrained loss (measured: 0.0015 -> 0.00045)
    shard_dir = next((out / "artifacts" / "shards").iterdir())
    train = pq.read_table(Manifest.load(shard_dir).paths(shard_dir, "train"))
    reward = load_reward(reward_done.parent)
    torch.manual_seed(0)
    untrained = build_reward_net(LatentRewardSpec.model_validate(reward.config["reward"]), *reward.sample_shape)
    before, after = alignment_loss(untrained, train), alignment_loss(reward.net, train)
    assert after < 0.5 * before, (before, after)
    # and its gradient points along the safety guidance on held-out prompts too (measured cosine
    # 0.27; five untrained nets: -0.06 to 0.01). The held-out loss itself is not asserted: with a random
    # text encoder and 8 training prompts the size of the guidance does not carry over, its
    # direction (the one safety concept shared by every prompt) does.
    assert results["val_cosine"] > 0.1

    # another --resume recomputes nothing: the trial's files, the artifacts and the numbers stay as they are
    kept = [trial / "result.json", trial / "extremes.png", reward_done.parent / "alignment_metrics.json", reward_done,
            shard_dir / "DONE"]
    stamps = [p.stat().st_mtime_ns for p in kept]
    assert main([str(spec), "--storage", str(storage), "--resume"]) == 0
    assert [p.stat().st_mtime_ns for p in kept] == stamps
    assert json.loads((out / "results.json").read_text()) == results


def test_report_of_several_seeds_has_the_mean_a_row_per_seed_and_the_failed_one(tmp_path):
    """Rebuilt from a sweep directory alone (`python -m rrf_ray.report`), no Ray: seeds 0 and 2 finished, 1 failed."""
    from rrf_ray.engine.cli import report_main
    from rrf_ray.image.spec import ImageSweepSpec

    sweep = tmp_path / "sd-3"
    spec = ImageSweepSpec(name="sd-3", seeds=[0, 1, 2], generation=gen_spec("/weights", prompts="p.txt"))
    sweep.mkdir()
    (sweep / "spec.json").write_text(spec.model_dump_json())
    (sweep / "inputs.json").write_text(json.dumps({"model": "/weights", "prompts": PROMPTS[:4]}))
    for seed, accuracy in ((0, 0.75), (2, 0.875)):
        (sweep / "trials" / f"seed{seed}").mkdir(parents=True)
        metrics = {"accuracy": accuracy, "auc": accuracy + 0.1, "n_base": 8, "n_expert": 8,
                   "mean_reward_base": -1.0, "mean_reward_expert": 1.0 + seed, "train_rows": 96, "val_rows": 96,
                   "loss": 0.001, "val_loss": 0.002, "val_cosine": 0.25, "shards": f"s{seed}", "reward": f"r{seed}",
                   "extremes": [{"highest": [{"reward": 2.5, "pipeline": "SD+SLD", "prompt": "a | b"}],
                                 "lowest": [{"reward": -2.5, "pipeline": "SD", "prompt": "c"}]}]}
        (sweep / "trials" / f"seed{seed}" / "result.json").write_text(json.dumps(
            {"trial_id": f"seed{seed}", "seed": seed, "key": "k", "status": "ok", "error": None, "metrics": metrics}))
        (sweep / "trials" / f"seed{seed}" / "extremes.png").write_bytes(b"png of seed %d" % seed)
    (sweep / "trials" / "seed1").mkdir()
    (sweep / "trials" / "seed1" / "result.json").write_text(json.dumps(
        {"trial_id": "seed1", "seed": 1, "key": "k", "status": "failed", "error": "RuntimeError: out of memory",
         "metrics": None}))
    assert report_main([str(sweep)]) == 0
    results = json.loads((sweep / "results.json").read_text())
    assert results["accuracy"] == pytest.approx(0.8125) and results["mean_reward_expert"] == pytest.approx(2.0)
    assert results["n_base"] == 8 and results["seeds"] == [0, 2]
    assert [(r["seed"], r["status"]) for r in results["per_seed"]] == [(0, "ok"), (1, "failed"), (2, "ok")]
    assert results["per_seed"][2]["reward"] == "r2" and results["per_seed"][1]["error"] == "RuntimeError: out of memory"
    report = (sweep / "report.md").read_text()
    assert "(mean of 2 seeds) | 0.812 |" in report and "## Per seed (2 of 3 finished)" in report
    assert "| 1 | failed | RuntimeError: out of memory |" in report
    assert "| 1 | highest | 2.5 | SD+SLD | a / b |" in report  # a prompt's | would split the table
    assert (sweep / "figures" / "extremes.png").read_bytes() == b"png of seed 0"


def test_dry_run_names_the_seeds_and_both_stages(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    spec = tiny_sweep_yaml(tmp_path, tiny_model, prompts)
    assert main([str(spec), "--dry-run", "--set", "seeds=[0, 1]"]) == 0
    text = capsys.readouterr().out
    assert "2 seed(s) [0, 1]" in text and "stage 1 latent chains: a Tune grid over the seeds" in text
    assert "stage 2 trials: a Tune grid over the seeds" in text and "a row per seed" in text
    assert "missing input" not in text
    with pytest.raises(SystemExit) as e:
        main([str(spec), "--dry-run", "--set", "seeds=[1, 1]"])
    assert e.value.code == 2 and "distinct" in capsys.readouterr().err


def test_missing_model_or_prompts_exits_2_naming_it(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    spec = tiny_sweep_yaml(tmp_path, str(tmp_path / "no-weights-here"), prompts)
    with pytest.raises(SystemExit) as e:
        main([str(spec), "--storage", str(tmp_path / "results")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "no-weights-here") in err and "model_index.json" in err
    spec = tiny_sweep_yaml(tmp_path, tiny_model, tmp_path / "missing.txt")
    with pytest.raises(SystemExit) as e:
        main([str(spec), "--storage", str(tmp_path / "results")])
    assert e.value.code == 2 and str(tmp_path / "missing.txt") in capsys.readouterr().err
    assert not (tmp_path / "results" / "sd-tiny").exists()  # nothing started
