"""The image sweep's report, rebuilt from its directory alone (`python -m rrf_ray.report DIR`).

    SWEEP_DIR/spec.json                        the sweep's spec (seeds, generation, ...)
    SWEEP_DIR/inputs.json                      {"model", "prompts"}: what the run read
    SWEEP_DIR/trials/seed<N>/result.json       {"trial_id", "seed", "key", "status", "error", "metrics"}
    SWEEP_DIR/trials/seed<N>/extremes.png      (ok trials)

Writes report.md, results.json and figures/extremes.png. With one seed they hold that
seed's numbers; with several, the mean over the seeds that finished, a row per seed and
the failed or missing ones by name. The extreme images shown are the first finished seed's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rrf_ray.engine.atomic import write_atomic
from rrf_ray.image.spec import ImageSweepSpec

TRIALS_FILE, INPUTS_FILE, RESULT_FILE, FIGURE_FILE = "trials.json", "inputs.json", "result.json", "extremes.png"
SCORE_FIELDS = ["accuracy", "auc", "n_base", "n_expert", "mean_reward_base", "mean_reward_expert"]
REWARD_FIELDS = ["train_rows", "val_rows", "loss", "val_loss", "val_cosine"]
JUDGE_FIELDS = ["judge_digit", "judge_accuracy", "concept_base", "images_base", "concept_expert", "images_expert",
                "concept_probability_base", "concept_probability_expert", "concept_probability_difference",
                "reward_concept_spearman_all", "reward_concept_spearman_base"]


class ImageReportError(ValueError):
    """A sweep directory the report cannot use (no finished seed); the CLI exits 2."""


def trial_id(seed: int) -> str:
    return f"seed{seed}"


def read_results(sweep_dir) -> dict[int, dict]:
    """{seed: result.json} of every seed the spec names; a seed without one is `missing`."""
    sweep_dir = Path(sweep_dir)
    spec = ImageSweepSpec.model_validate_json((sweep_dir / "spec.json").read_text())
    out = {}
    for seed in spec.seeds:
        path = sweep_dir / "trials" / trial_id(seed) / RESULT_FILE
        try:
            out[seed] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            out[seed] = {"trial_id": trial_id(seed), "seed": seed, "status": "missing", "error": None,
                         "metrics": None}
    return out


def summary(finished: list[dict]) -> dict:
    """The numbers of one seed as they are; of several, their mean (an integer count stays one when all agree)."""
    out = {}
    for field in SCORE_FIELDS + REWARD_FIELDS:
        values = [m.get(field) for m in finished]
        if any(v is None for v in values):
            out[field] = None
        elif len(values) == 1 or (all(isinstance(v, int) for v in values) and len(set(values)) == 1):
            out[field] = values[0]
        else:
            out[field] = math.fsum(values) / len(values)
    return out


def write_image_report(sweep_dir) -> Path:
    """report.md + results.json + figures/extremes.png under `sweep_dir`; returns report.md's path."""
    sweep_dir = Path(sweep_dir)
    spec = ImageSweepSpec.model_validate_json((sweep_dir / "spec.json").read_text())
    g = spec.generation
    results = read_results(sweep_dir)
    ok = [seed for seed, r in results.items() if r.get("status") == "ok"]
    if not ok:
        first = next(iter(results.values()))
        raise ImageReportError(f"{sweep_dir}: no seed finished (seed {first['seed']}: {first['status']}"
                               + (f", {first['error']}" if first.get("error") else "") + ")")
    finished = [results[s]["metrics"] for s in ok]
    numbers = summary(finished)
    inputs = json.loads((sweep_dir / INPUTS_FILE).read_text())
    context = {"name": spec.name, "model": g.model, "prompts_file": g.prompts, "prompts_used": len(inputs["prompts"]),
               "steps": g.steps, "guidance_scale": g.guidance_scale,
               "safety": spec.safety.model_dump(exclude={"concept"}),
               "safety_concept": spec.safety.concept, "train_rows": numbers["train_rows"],
               "val_rows": numbers["val_rows"], "reward_steps": spec.reward.train_steps, "loss": numbers["loss"],
               "val_loss": numbers["val_loss"], "val_cosine": numbers["val_cosine"]}
    several = len(results) > 1
    if several:
        per_seed = [{"seed": s, "status": r["status"], "error": r.get("error"),
                     **{k: v for k, v in (r.get("metrics") or {}).items() if k in SCORE_FIELDS + REWARD_FIELDS
                        + ["shards", "reward"]}} for s, r in results.items()]
        extra = {"seeds": ok, "per_seed": per_seed}
    else:
        extra = {"shards": finished[0]["shards"], "reward": finished[0]["reward"]}
    judged = {s: {k: v for k, v in results[s]["metrics"].items() if k in JUDGE_FIELDS} for s in ok
              if results[s]["metrics"].get("judge_digit") is not None}
    if judged:
        extra["judge"] = judged
    write_atomic(sweep_dir / "results.json",
                 json.dumps({**{k: numbers[k] for k in SCORE_FIELDS}, **context, **extra}, indent=1, default=str))
    shown = ok[0]
    write_atomic(sweep_dir / "figures" / FIGURE_FILE,
                 (sweep_dir / "trials" / trial_id(shown) / FIGURE_FILE).read_bytes())

    mean = f" (mean of {len(ok)} seeds)" if len(ok) > 1 else ""
    lines = [
        f"# {spec.name}: relative reward, Stable Diffusion vs Safe Stable Diffusion",
        "",
        f"Model `{g.model}`; {context['prompts_used']} prompts from `{g.prompts}`; "
        f"{g.steps} DDIM steps, CFG {g.guidance_scale}, SLD {context['safety']}, safety concept "
        f"\"{spec.safety.concept or 'the Safe pipeline default'}\".",
        f"Training triples: {context['train_rows']} rows (train), {context['val_rows']} (held out); "
        f"reward: {spec.reward.train_steps} steps, final loss {_fmt(context['loss'])}, "
        f"held-out gradient cosine {_fmt(context['val_cosine'])}{mean}.",
        "",
        "## Held-out separation of the two pipelines' final latents",
        "",
        "| metric | value | paper |",
        "|---|---|---|",
        f"| accuracy (logistic regression on the reward, held-out half){mean} | {numbers['accuracy']:.3f} | > 0.90 |",
        f"| ROC AUC{mean} | {numbers['auc']:.3f} | |",
        f"| final latents scored{' per seed' if len(ok) > 1 else ''} | {_count(numbers['n_base'])} SD, "
        f"{_count(numbers['n_expert'])} SD+SLD | |",
        f"| mean reward{mean} | SD {numbers['mean_reward_base']:.4g}, SD+SLD {numbers['mean_reward_expert']:.4g} | |",
        "",
    ]
    if several:
        lines += [f"## Per seed ({len(ok)} of {len(results)} finished)", "",
                  "| seed | status | accuracy | ROC AUC | mean reward SD | mean reward SD+SLD | reward loss | "
                  "held-out cosine |", "|---|---|---|---|---|---|---|---|"]
        for s, r in results.items():
            m = r.get("metrics")
            if r["status"] == "ok":
                lines.append(f"| {s} | ok | {m['accuracy']:.3f} | {m['auc']:.3f} | {m['mean_reward_base']:.4g} | "
                             f"{m['mean_reward_expert']:.4g} | {_fmt(m.get('loss'))} | {_fmt(m.get('val_cosine'))} |")
            else:
                error = (r.get("error") or "no result.json").replace("|", "/").splitlines()[0][:100]
                lines.append(f"| {s} | {r['status']} | {error} | | | | | |")
        lines.append("")
    lines += judge_lines(spec, {s: results[s]["metrics"] for s in ok})
    lines += [
        "## Highest- and lowest-reward images per batch",
        "",
        ("Batches of held-out images; the lowest-reward images are blurred. ![extremes](figures/extremes.png)"
         + (f" Seed {shown}; every seed's are in trials/seed<N>/{FIGURE_FILE}." if several else "")),
        "",
    ]
    extremes = results[shown]["metrics"]["extremes"]
    judged = any("concept_probability" in row for batch in extremes for side in batch.values() for row in side)
    lines += (["| batch | side | reward | pipeline | judge's concept probability | prompt |", "|---|---|---|---|---|---|"]
              if judged else ["| batch | side | reward | pipeline | prompt |", "|---|---|---|---|---|"])
    for b, batch in enumerate(extremes):
        for side in ("highest", "lowest"):
            for row in batch[side]:
                judge = f"{_fmt(row.get('concept_probability'))} | " if judged else ""
                lines.append(f"| {b + 1} | {side} | {row['reward']:.4g} | {row['pipeline']} | {judge}"
                             f"{row['prompt'].replace('|', '/')[:80]} |")
    path = write_atomic(sweep_dir / "report.md", "\n".join(lines) + "\n")
    from rrf_ray.engine.report import write_html_report

    write_html_report(path)
    return path


def judge_lines(spec: ImageSweepSpec, finished: dict[int, dict]) -> list[str]:
    """The judge's section: the concept's rate under each pipeline (seeds pooled), and per seed the paired
    change in its probability and the reward's correlation with it. Nothing without a judge."""
    from rrf_ray.metrics.aggregate import Estimate
    from rrf_ray.metrics.intervals import format_rate

    judged = {s: m for s, m in finished.items() if m.get("judge_digit") is not None}
    if not judged:
        return []

    def rate(branch):
        k = sum(m[f"concept_{branch}"] for m in judged.values())
        n = sum(m[f"images_{branch}"] for m in judged.values())
        return format_rate([True] * k + [False] * (n - k))

    def estimate(values) -> str:
        return Estimate(*values).format(3)

    first = next(iter(judged.values()))
    pooled = f" ({len(judged)} seeds pooled)" if len(judged) > 1 else ""
    lines = [
        "## The concept under each pipeline, by an independent judge",
        "",
        f"The judge is a digit classifier fitted on the digits pipeline's held-out real digits, never on generated "
        f"images (accuracy on real digits it was not fitted on: {_fmt(first.get('judge_accuracy'))}). It looks for "
        f"the digit {first['judge_digit']} in every held-out final image; the safety concept the expert branch "
        f"steers away from is \"{spec.safety.concept or 'the Safe pipeline default'}\". Rates: 95% Wilson intervals. SD+SLD − SD: chains paired "
        "by their initial noise, bootstrap (BCa) interval. Spearman ρ: bootstrap percentile interval; a reward "
        "that learned the concept scores concept-like images low (ρ < 0), also within SD's images alone.",
        "",
        "| | SD | SD+SLD |",
        "|---|---|---|",
        f"| images judged the digit {first['judge_digit']}{pooled} | {rate('base')} | {rate('expert')} |",
        "",
        "| seed | judge's concept probability, SD | SD+SLD | paired SD+SLD − SD | ρ(reward, concept), all images | "
        "ρ within SD's images |",
        "|---|---|---|---|---|---|",
    ]
    for s, m in judged.items():
        lines.append(f"| {s} | {m['concept_probability_base']:.3f} | {m['concept_probability_expert']:.3f} | "
                     f"{estimate(m['concept_probability_difference'])} | "
                     f"{estimate(m['reward_concept_spearman_all'])} | {estimate(m['reward_concept_spearman_base'])} |")
    if all("pairs" in m for m in judged.values()):
        lines += ["", *pair_lines(judged, first["judge_digit"], pooled)]
    return lines + [""]


def pair_lines(judged: dict[int, dict], digit: int, pooled: str) -> list[str]:
    """Where the two pipelines differ: SD+SLD vs SD images of the same noise, seeds pooled."""
    from rrf_ray.metrics.intervals import format_rate

    def rate(k_key, n_key):
        k, n = (sum(m[key] for m in judged.values()) for key in (k_key, n_key))
        return format_rate([True] * k + [False] * (n - k))

    return [
        f"Pairs (an SD and an SD+SLD image from the same noise and prompt{pooled}): SLD changes the judged digit of "
        f"{rate('pairs_digit_changed', 'pairs')} of them (the others keep their digit). Within a pair the "
        "prompt and the noise are the same, so the ranking below sees SLD's effect alone, where the accuracy above "
        "must also tell it from how the reward varies from prompt to prompt. How often the reward ranks the SD+SLD "
        "image above its SD twin (95% Wilson intervals; 50%: chance):",
        "",
        "| pairs | SD+SLD ranked above SD |",
        "|---|---|",
        f"| all | {rate('pairs_expert_ranked_above', 'pairs')} |",
        f"| whose SD image shows the digit {digit} (where SLD acts) | "
        f"{rate('concept_pairs_expert_ranked_above', 'concept_pairs')} |",
    ]


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _count(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"
