"""`python -m rrf_ray.sweep sd`: the image experiment as one run on Ray.

Stages, each an idempotent content-addressed artifact under the sweep directory:
  1. latent chains -> Parquet shards (Ray tasks, GPU when present);
  2. the reward, trained by the alignment trainer streaming the shards (Ray Data -> Ray Train);
  3. held-out evaluation and the report (report.md, figures/extremes.png, results.json).
`--resume` reuses finished artifacts, completes a partial shard set and resumes the reward
run from its last checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rrf_ray.artifacts import ArtifactStore, artifact_key
from rrf_ray.atomic import write_atomic
from rrf_ray.image.config import ImageSweepSpec
from rrf_ray.storage import SweepStorage


def shards_key(spec: ImageSweepSpec, model: str, prompts_digest: str) -> str:
    return artifact_key("image-shards", model, prompts_digest, spec.seed,
                        spec.generation.model_dump(mode="json", exclude={"cpus_per_task", "gpus_per_task",
                                                                         "batch_size", "model", "prompts"}),
                        spec.safety)


def reward_key(spec: ImageSweepSpec, skey: str) -> str:
    return artifact_key("image-reward", skey, spec.reward, spec.seed)


def inputs(spec: ImageSweepSpec) -> tuple[str, list[str]]:
    """(model to load, prompts); ConfigError naming a missing model directory or prompts file."""
    from rrf_ray.image.pipeline import check_model, read_prompts

    g = spec.generation
    return check_model(g.model), read_prompts(g.prompts, g.prompt_column, g.max_prompts)


def run_image_sweep(spec: ImageSweepSpec, storage: SweepStorage, resume: bool = False,
                    address: str | None = None) -> Path:
    """All three stages; returns the report path (in the local directory or mirror)."""
    import ray

    from rrf_ray.image.evaluate import (decode_latents, extremes_png, final_latents, pick_extremes, score_finals,
                                        write_report)
    from rrf_ray.image.generate import generate_shards
    from rrf_ray.image.pipeline import prompts_digest
    from rrf_ray.ray_utils import init_ray, quiet_ray_data
    from rrf_ray.rrf.align import train_reward
    from rrf_ray.rrf.reward_nets import load_reward
    from rrf_ray.rrf.shards import Manifest

    model, prompts = inputs(spec)  # user errors before anything starts
    out = storage.local
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "spec.json", spec.model_dump_json(indent=1))
    storage.push("spec.json")
    init_ray(address, num_cpus=spec.resources.num_cpus or (os.cpu_count() or 1) + 1)
    quiet_ray_data()
    store = ArtifactStore(storage)
    g, r = spec.generation, spec.resources

    skey = shards_key(spec, model, prompts_digest(prompts))
    shard_dir = store.path("shards", skey)
    print(f"[image] stage 1/3: latent chains of {len(prompts)} prompts x {g.images_per_prompt} -> {shard_dir}",
          flush=True)
    if not store.is_done("shards", skey):
        generate_shards(model, prompts, shard_dir, g, spec.safety, seed=spec.seed, use_gpu=r.use_gpu,
                        overwrite=True, on_this_node=storage.is_remote)
        store.mark_done("shards", skey)
    manifest = Manifest.load(shard_dir)

    rkey = reward_key(spec, skey)
    print(f"[image] stage 2/3: reward ({spec.reward.train_steps} steps) on {manifest.rows('train')} rows",
          flush=True)
    metrics = {}
    if not store.is_done("rewards", rkey):
        remote = (storage.fs, storage.remote_path(f"artifacts/shards/{skey}")) if storage.is_remote else None
        # materialize=False: stream the shards from disk each epoch (image triples are large)
        result = train_reward(shard_dir, spec.reward, r, storage.uri_of("train"), f"reward-{spec.name}-{rkey}",
                              seed=spec.seed, materialize=False, max_failures=r.max_failures, remote=remote)
        metrics = dict(result.metrics or {})
        write_atomic(out / "reward_metrics.json", json.dumps(metrics, indent=1, default=str))
        with result.checkpoint.as_directory() as d:
            store.publish("rewards", rkey, d)
    elif (out / "reward_metrics.json").exists():
        metrics = json.loads((out / "reward_metrics.json").read_text())

    print("[image] stage 3/3: held-out evaluation and report", flush=True)
    reward = load_reward(store.path("rewards", rkey))
    finals = final_latents(shard_dir, "val")
    scores = score_finals(reward, finals, t=spec.evaluation.t, seed=spec.seed)
    batches = pick_extremes(scores["rewards"], spec.evaluation, seed=spec.seed)
    shown = sorted({i for b in batches for side in ("highest", "lowest") for i in b[side]})
    gpus = g.gpus_per_task if r.use_gpu else 0
    decoded = decode_latents.options(num_cpus=1, num_gpus=gpus).remote(model, finals["latents"][shown], g.dtype, r.use_gpu)
    images = dict(zip(shown, ray.get(decoded)))
    png = extremes_png(images, batches, scores["rewards"], finals["kind"], spec.evaluation.blur_fraction)
    context = {"name": spec.name, "model": g.model, "prompts_file": g.prompts, "prompts_used": len(prompts),
               "steps": g.steps, "guidance_scale": g.guidance_scale,
               "safety": spec.safety.model_dump(exclude={"concept"}), "train_rows": manifest.rows("train"),
               "val_rows": manifest.rows("val"), "reward_steps": spec.reward.train_steps,
               "loss": metrics.get("loss"), "val_loss": metrics.get("val_loss"),
               "val_cosine": metrics.get("val_cosine"), "shards": skey, "reward": rkey}
    report = write_report(out, scores, finals, batches, prompts, g.images_per_prompt, png, context)
    for name in ("report.md", "results.json", "figures", "reward_metrics.json"):
        if (out / name).exists():
            storage.push(name)
    print(f"[image] accuracy {scores['accuracy']:.3f}, ROC AUC {scores['auc']:.3f} on {scores['n_base']} + "
          f"{scores['n_expert']} held-out final latents", flush=True)
    print(f"[image] report: {storage.uri_of('report.md') if storage.is_remote else report}", flush=True)
    return report


def dry_run(spec: ImageSweepSpec) -> str:
    """What a run would do and write; names missing inputs instead of failing."""
    from rrf_ray.config import ConfigError
    from rrf_ray.image.pipeline import check_model, read_prompts

    g, r = spec.generation, spec.resources
    notes = []
    try:
        check_model(g.model)
    except ConfigError as e:
        notes.append(f"missing input: {e}")
    try:
        n_prompts = len(read_prompts(g.prompts, g.prompt_column, g.max_prompts))
    except ConfigError as e:
        notes.append(f"missing input: {e}")
        n_prompts = g.max_prompts
    chains = None if n_prompts is None else n_prompts * g.images_per_prompt
    rows = None if chains is None else 2 * chains * g.steps
    row_bytes = 3 * 4 * 4 * g.latent_size ** 2  # three float32 latents, 4 channels
    shards = None if n_prompts is None else -(-n_prompts // g.prompts_per_shard)
    device = f"{g.gpus_per_task} GPU" if r.use_gpu else f"{g.cpus_per_task} CPU"
    lines = [
        f"image sweep {spec.name}: model {g.model}, prompts {g.prompts} ({n_prompts if n_prompts else '?'} prompts)",
        f"stage 1 latent chains: {chains or '?'} x (SD, SD+SLD) chains of {g.steps} DDIM steps, "
        f"{shards or '?'} Ray tasks ({device} each), {rows or '?'} rows "
        f"({'?' if rows is None else f'{rows * row_bytes / 1e9:.2f} GB'} of float32 latents, "
        f"4x{g.latent_size}x{g.latent_size})",
        f"stage 2 reward: latent_conv, {spec.reward.train_steps:,} steps of batch {spec.reward.batch_size} "
        f"({r.num_workers} worker(s){', GPU' if r.use_gpu else ''})",
        "stage 3 evaluation: held-out accuracy / ROC AUC of SD vs SD+SLD final latents; report.md, "
        "figures/extremes.png, results.json",
    ]
    return "\n".join(lines + notes)
