"""`python -m rrf_ray.sweep sd`: the image experiment (`experiment: image`) as its stages on the engine.

Stages, each idempotent (content-addressed artifacts under the sweep directory, as in Maze2D):
  1. latent chains: a Tune grid over seeds; each trial writes its seed's chains as Parquet
     shards (Ray tasks, GPU when present);
  2. trials: a Tune grid over seeds; each trains the reward on its seed's shards (the
     alignment trainer streaming them: Ray Data -> Ray Train), scores the held-out final
     latents and draws its extreme images -> trials/seed<N>/result.json;
  3. the report (report.md, results.json, figures/extremes.png).
`--resume` restores each stage's Tuner, completes a partial shard set, resumes a reward run
from its last checkpoint and reuses finished trial results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rrf_ray.engine.artifacts import artifact_key
from rrf_ray.engine.atomic import write_atomic
from rrf_ray.engine.stages import (
    PhaseTimer,
    SweepPaths,
    raise_if_any_failed,
    read_trial_result,
    recorded_trial,
    run_stage,
    tune_report_callbacks,
    write_sweep_files,
)
from rrf_ray.engine.storage import SweepStorage
from rrf_ray.image.report import INPUTS_FILE, trial_id
from rrf_ray.image.spec import ImageSweepSpec

STAGE_CHAINS, STAGE_TRIALS = "stage1-latent-chains", "stage2-trials"
TRIAL_METRICS = ["step", "loss", "val_cosine", "accuracy", "auc"]


def trial_table(spec: ImageSweepSpec) -> list[dict]:
    return [{"trial_id": trial_id(s), "seed": s} for s in spec.seeds]


# -- keys: exactly the spec parts that determine each artifact --------------------------

def shards_key(spec: ImageSweepSpec, model: str, prompts_digest: str, seed: int) -> str:
    return artifact_key("image-shards", model, prompts_digest, seed,
                        spec.generation.model_dump(mode="json", exclude={"cpus_per_task", "gpus_per_task",
                                                                         "batch_size", "model", "prompts"}),
                        spec.safety)


def reward_key(spec: ImageSweepSpec, skey: str, seed: int) -> str:
    return artifact_key("image-reward", skey, spec.reward, seed)


def result_key(spec: ImageSweepSpec, rkey: str) -> str:
    """A trial's result.json: its reward, scored and drawn the way `evaluation` says."""
    return artifact_key("image-result", rkey, spec.evaluation)


# -- inputs: read once by the driver, shared with every trial through the sweep's storage --

def inputs(spec: ImageSweepSpec) -> tuple[str, list[str]]:
    """(model to load, prompts); ConfigError naming a missing model directory or prompts file."""
    from rrf_ray.image.pipeline import check_model, read_prompts

    g = spec.generation
    model = check_model(g.model)
    if spec.evaluation.judge_digit is not None:
        from rrf_ray.image.digits import check_judge_data

        check_judge_data(model)
    return model, read_prompts(g.prompts, g.prompt_column, g.max_prompts)


def read_inputs(storage: SweepStorage) -> tuple[str, list[str], str]:
    """(model, prompts, prompts digest) as the driver wrote them: a trial on another node needs no prompts file."""
    from rrf_ray.image.pipeline import prompts_digest

    text = storage.read_text(INPUTS_FILE)
    if text is None:
        raise RuntimeError(f"{INPUTS_FILE} is missing in {storage.uri}: the sweep did not start")
    data = json.loads(text)
    return data["model"], data["prompts"], prompts_digest(data["prompts"])


# -- stage 1 and 2 trainables (run as Tune trials) --------------------------------------

def make_chains(config: dict, spec: ImageSweepSpec, storage: SweepStorage) -> None:
    """Tune trial: one seed's latent chains as a shard set (its tasks hold the CPUs or GPUs)."""
    from ray import tune

    from rrf_ray.image.generate import generate_shards

    paths, seed = SweepPaths(storage), config["seed"]
    model, prompts, digest = read_inputs(storage)
    skey = shards_key(spec, model, digest, seed)
    paths.artifacts.ensure("shards", skey, lambda d: generate_shards(
        model, prompts, d, spec.generation, spec.safety, seed=seed, use_gpu=spec.resources.use_gpu, overwrite=True,
        progress=False, on_this_node=storage.is_remote), in_place=True)  # resumes a partial set
    tune.report({"done": 1, "artifact": skey})


def run_trial(config: dict, spec: ImageSweepSpec, storage: SweepStorage) -> None:
    """Tune trial: one seed's reward and held-out evaluation, recorded in trials/seed<N>/result.json."""
    from ray import tune

    from rrf_ray.engine.ray_runtime import quiet_ray_data

    quiet_ray_data()
    paths, seed = SweepPaths(storage), config["seed"]
    tid = trial_id(seed)
    model, prompts, digest = read_inputs(storage)
    skey = shards_key(spec, model, digest, seed)
    rkey = reward_key(spec, skey, seed)
    record = {"trial_id": tid, "seed": seed, "key": result_key(spec, rkey)}
    metrics = recorded_trial(paths, tid, record, lambda: _trial_work(spec, paths, tid, seed, model, prompts, skey,
                                                                      rkey))
    tune.report({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})


def _trial_work(spec: ImageSweepSpec, paths: SweepPaths, tid: str, seed: int, model: str, prompts: list[str],
                skey: str, rkey: str) -> dict:
    import ray

    from rrf_ray.image.digits import DigitJudge
    from rrf_ray.image.evaluate import (
        decode,
        decode_latents,
        extremes_png,
        extremes_table,
        final_latents,
        judged_concept,
        pick_extremes,
        score_finals,
    )
    from rrf_ray.rrf.extract import aligned_reward
    from rrf_ray.rrf.reward_nets import load_reward
    from rrf_ray.rrf.shards import Manifest

    g, r, store = spec.generation, spec.resources, paths.artifacts
    out = paths.trial_dir(tid)
    timer = PhaseTimer()
    shard_dir = store.require("shards", skey, f"the latent chains of seed {seed}")
    manifest = Manifest.load(shard_dir)

    timer.start("reward")
    # materialize=False: stream the shards from disk each epoch (image triples are large)
    extraction = aligned_reward(paths, skey, rkey, spec.reward, r, seed, f"reward-{spec.name}",
                                materialize=False, callbacks=tune_report_callbacks())
    reward_metrics = extraction.metrics

    timer.start("eval")
    reward = load_reward(extraction.path)
    finals = final_latents(shard_dir, "val")
    scores = score_finals(reward, finals, t=spec.evaluation.t, seed=seed)
    batches = pick_extremes(scores["rewards"], spec.evaluation, seed=seed)
    shown = sorted({i for b in batches for side in ("highest", "lowest") for i in b[side]})
    digit = spec.evaluation.judge_digit
    wanted = list(range(len(finals["latents"]))) if digit is not None else shown  # the judge sees every image
    if r.use_gpu:
        decoded = ray.get(decode_latents.options(num_cpus=1, num_gpus=g.gpus_per_task).remote(
            model, finals["latents"][wanted], g.dtype, True))
    else:
        decoded = decode(model, finals["latents"][wanted], g.dtype, False)
    images = dict(zip(wanted, decoded))
    png = extremes_png({i: images[i] for i in shown}, batches, scores["rewards"], finals["kind"],
                       spec.evaluation.blur_fraction)
    write_atomic(out / "extremes.png", png)
    judged, concept = {}, None
    if digit is not None:
        timer.start("judge")
        judge = DigitJudge.from_pipeline(model)
        probabilities = judge.probabilities(decoded)
        concept = probabilities[:, digit]
        judged = {**judged_concept(scores["rewards"], finals, concept, probabilities.argmax(axis=1), digit, seed),
                  "judge_accuracy": judge.accuracy}
    return {**{k: v for k, v in scores.items() if k != "rewards"}, **judged,
            "train_rows": manifest.rows("train"), "val_rows": manifest.rows("val"),
            **{k: reward_metrics.get(k) for k in ("loss", "val_loss", "val_cosine")},
            "shards": skey, "reward": rkey,
            "extremes": extremes_table(batches, scores["rewards"], finals, prompts, g.images_per_prompt, concept),
            **timer.stop()}


# -- the whole sweep ------------------------------------------------------------------------

def run_image_sweep(spec: ImageSweepSpec, storage: SweepStorage, resume: bool = False,
                    address: str | None = None) -> Path:
    """All stages; returns the report path (in the local directory or mirror)."""
    from ray import tune

    from rrf_ray.engine.ray_runtime import init_ray, quiet_ray_data
    from rrf_ray.image.report import write_image_report

    model, prompts = inputs(spec)  # user errors before anything starts
    g, r = spec.generation, spec.resources
    write_sweep_files(storage, {"spec.json": spec.model_dump_json(indent=1),
                                "trials.json": json.dumps(trial_table(spec), indent=1),
                                INPUTS_FILE: json.dumps({"model": model, "prompts": prompts}, indent=1)})
    init_ray(address, num_cpus=r.num_cpus or (os.cpu_count() or 1) + 1)
    quiet_ray_data()
    seeds = {"seed": tune.grid_search(list(spec.seeds))}

    print(f"[image] stage 1/3: latent chains of {len(prompts)} prompts x {g.images_per_prompt}, "
          f"seeds {spec.seeds}", flush=True)
    grid = run_stage(STAGE_CHAINS, make_chains, seeds, spec, storage, resume, ["done"],
                     trial_resources={"cpu": r.trial_cpus})  # its generation tasks hold the CPUs or GPUs
    raise_if_any_failed(grid, "latent chain")
    print(f"[image] stage 2/3: reward ({spec.reward.train_steps} steps) and held-out evaluation per seed",
          flush=True)
    run_stage(STAGE_TRIALS, run_trial, seeds, spec, storage, resume, TRIAL_METRICS)

    print("[image] stage 3/3: report", flush=True)
    storage.pull("trials", refresh=True)  # remote storage: every node's trial results
    results = {s: read_trial_result(storage, trial_id(s)) or {"status": "missing"} for s in spec.seeds}
    failed = {s: res for s, res in results.items() if res.get("status") != "ok"}
    if len(failed) == len(results):
        s, res = next(iter(failed.items()))
        raise RuntimeError(f"no seed trial finished; seed {s}: {res.get('status')}, {res.get('error')} "
                           f"(trials/{trial_id(s)}/result.json)")
    report = write_image_report(storage.local)
    for name in ("report.md", "report.html", "results.json", "figures"):
        storage.push(name)
    for s, res in results.items():
        if s in failed:
            print(f"[image] seed {s}: {res.get('status')}, {res.get('error')}", flush=True)
        else:
            m = res["metrics"]
            print(f"[image] seed {s}: accuracy {m['accuracy']:.3f}, ROC AUC {m['auc']:.3f} on {m['n_base']} + "
                  f"{m['n_expert']} held-out final latents", flush=True)
    print(f"[image] report: {storage.uri_of('report.md') if storage.is_remote else report}", flush=True)
    return report


# -- dry run ------------------------------------------------------------------------------

def dry_run(spec: ImageSweepSpec) -> str:
    """What a run would do and write; names missing inputs instead of failing."""
    from rrf_ray.engine.spec import ConfigError
    from rrf_ray.image.pipeline import check_model, read_prompts

    g, r = spec.generation, spec.resources
    notes = []
    try:
        model = check_model(g.model)
        if spec.evaluation.judge_digit is not None:
            from rrf_ray.image.digits import check_judge_data

            check_judge_data(model)
    except ConfigError as e:
        notes.append(f"missing input: {e}")
    try:
        n_prompts = len(read_prompts(g.prompts, g.prompt_column, g.max_prompts))
    except ConfigError as e:
        notes.append(f"missing input: {e}")
        n_prompts = g.max_prompts
    n_seeds = len(spec.seeds)
    chains = None if n_prompts is None else n_prompts * g.images_per_prompt
    rows = None if chains is None else 2 * chains * g.steps
    row_bytes = 3 * 4 * 4 * g.latent_size ** 2  # three float32 latents, 4 channels
    shards = None if n_prompts is None else -(-n_prompts // g.prompts_per_shard)
    device = f"{g.gpus_per_task} GPU" if r.use_gpu else f"{g.cpus_per_task} CPU"
    per_run = (f"in the trial's own process, {r.cpus_per_worker} CPU" if r.trains_locally else
               f"{r.num_workers} worker(s) x {r.cpus_per_worker} CPU" + (f" + {r.gpus_per_worker} GPU" if r.use_gpu
                                                                         else ""))
    lines = [
        f"image sweep {spec.name}: model {g.model}, prompts {g.prompts} ({n_prompts if n_prompts else '?'} prompts), "
        f"{n_seeds} seed(s) {spec.seeds}",
        f"stage 1 latent chains: a Tune grid over the seeds; per seed {chains or '?'} x (SD, SD+SLD) chains of "
        f"{g.steps} DDIM steps, {shards or '?'} Ray tasks ({device} each), {rows or '?'} rows "
        f"({'?' if rows is None else f'{rows * row_bytes / 1e9:.2f} GB'} of float32 latents, "
        f"4x{g.latent_size}x{g.latent_size})",
        f"stage 2 trials: a Tune grid over the seeds; each trains a latent_conv reward "
        f"({spec.reward.train_steps:,} steps of batch {spec.reward.batch_size}, {per_run}), scores the held-out "
        f"SD vs SD+SLD final latents (accuracy, ROC AUC)"
        + ("" if spec.evaluation.judge_digit is None else
           f", decodes every one for the judge (how often the digit {spec.evaluation.judge_digit} appears, its "
           "correlation with the reward)")
        + " and draws its extremes -> trials/seed<N>/result.json; "
        f"max concurrent: {r.max_concurrent_trials or 'unlimited'}; retries: {r.max_failures}",
        "stage 3 report: report.md, results.json, figures/extremes.png"
        + (" (the mean over seeds, and a row per seed)" if n_seeds > 1 else ""),
    ]
    return "\n".join(lines + notes)
