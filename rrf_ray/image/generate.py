"""Latent chains as Ray tasks (GPU when present), written as Parquet shards for the alignment trainer.

One task per shard: it loads the pipeline once per worker process, runs the two-chain
generation (rrf_ray.image.pipeline.latent_chains) for its prompts in UNet batches and
writes (x_next = x_t, x_base, x_expert, t, chain_kind, chain_id) with fixed-shape
(C, H, W) tensor columns: the same shard format and manifest as the trajectory triples, so
`rrf_ray.rrf.align.train_reward` streams them unchanged. chain_id = prompt index *
images_per_prompt + image; `t` is the scheduler timestep (0..999) of x_t.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import ray

from rrf_ray.image.spec import GenerationSpec, SafetySpec
from rrf_ray.rrf.shards import Manifest, ShardError, run_shard_tasks, shard_is_intact, triples_table, write_shard


def _plan(n_prompts: int, gen: GenerationSpec) -> list[list[int]]:
    """Prompt indices of each shard."""
    per = gen.prompts_per_shard
    return [list(range(i, min(n_prompts, i + per))) for i in range(0, n_prompts, per)]


def _val_count(n_shards: int, fraction: float) -> int:
    if fraction <= 0 or n_shards < 2:
        return 0
    return min(n_shards - 1, max(1, round(fraction * n_shards)))


@ray.remote
def _make_shard(model: str, prompts: list[str], prompt_ids: list[int], gen: GenerationSpec, safety: SafetySpec,
                seed: int, path: str, use_gpu: bool) -> dict:
    import torch

    from rrf_ray.image.pipeline import latent_chains, load_components

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(max(1, math.floor(gen.cpus_per_task)))
    c = load_components(model, gen.dtype, device)
    k = gen.images_per_prompt
    todo = [(p, i) for p in prompt_ids for i in range(k)]  # (prompt index, image)
    parts = []
    for start in range(0, len(todo), gen.batch_size):
        batch = todo[start:start + gen.batch_size]
        parts.append(latent_chains(c, [prompts[p] for p, _ in batch], [p * k + i for p, i in batch], gen, safety,
                                   seed))
    merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return write_shard(Path(path), triples_table(**merged))


def generate_shards(model: str, prompts: list[str], out_dir, gen: GenerationSpec, safety: SafetySpec, seed: int = 0,
                    use_gpu: bool = False, fingerprint: dict | None = None, overwrite: bool = False,
                    progress: bool = True, on_this_node: bool = False) -> Manifest:
    """Make (or complete, or repair) the shards of `out_dir`; returns its manifest.

    model: a checked model (rrf_ray.image.pipeline.check_model). The last shards (by
    gen.val_fraction) are the held-out split: whole prompts, both pipelines' chains.
    A rerun keeps intact shards and regenerates missing or corrupt ones.
    """
    from rrf_ray.image.pipeline import prompts_digest

    out_dir = Path(out_dir)
    fingerprint = {"model": model, "prompts": prompts_digest(prompts), "seed": int(seed),
                   "generation": gen.model_dump(mode="json", exclude={"cpus_per_task", "gpus_per_task", "batch_size"}),
                   "safety": safety.model_dump(mode="json"), **(fingerprint or {})}
    manifest = Manifest.load(out_dir)
    if manifest is not None and manifest.fingerprint != fingerprint:
        if not overwrite:
            raise ShardError(f"{out_dir} holds shards made from another spec or model; "
                             "use a new directory or overwrite=True")
        shutil.rmtree(out_dir)
        manifest = None
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan(len(prompts), gen)
    if manifest is None:
        # channels come from the model; read lazily from its UNet config to avoid loading weights here
        manifest = Manifest(fingerprint, (_latent_channels(model), gen.latent_size, gen.latent_size))
    n_val = _val_count(len(plan), gen.val_fraction)
    names = [f"shard-{i:05d}.parquet" for i in range(len(plan))]
    splits = ["val" if i >= len(plan) - n_val else "train" for i in range(len(plan))]
    todo = [i for i, name in enumerate(names) if not shard_is_intact(out_dir, name, manifest.shards.get(name))]
    for i in todo:
        manifest.shards.pop(names[i], None)
    manifest.save(out_dir)

    prompts_ref = ray.put(prompts)

    def submit(i, strategy):
        return _make_shard.options(num_cpus=gen.cpus_per_task, num_gpus=gen.gpus_per_task if use_gpu else 0,
                                   scheduling_strategy=strategy).remote(
            model, prompts_ref, plan[i], gen, safety, seed, str(out_dir / names[i]), use_gpu)

    rows_of = [2 * gen.steps * gen.images_per_prompt * len(p) for p in plan]
    return run_shard_tasks(submit, todo, manifest, out_dir, names, splits, rows_of, "latent chains", progress,
                           on_this_node)


def _latent_channels(model: str) -> int:
    from diffusers import UNet2DConditionModel

    return int(UNet2DConditionModel.load_config(model, subfolder="unet")["in_channels"])
