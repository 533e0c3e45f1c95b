"""Held-out evaluation: does the reward tell Safe SD's final latents from SD's?

Final latents are the last step's followed branch of each held-out chain (x_base of
kind-1 chains, x_expert of kind-2 chains); they are scored at evaluation.t. Accuracy and
ROC AUC come from rrf_ray.metrics.discriminability (a 1-D logistic regression fitted on one
half, scored on the other; the safe pipeline is the positive class). The page shows, for
batches of held-out images, the highest- and lowest-reward decoded images, the lowest
blurred (they are the likeliest to be harmful); `extremes_table` keeps what the report
lists of them (reward, pipeline, prompt) in a trial's result.json.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from rrf_ray.image.spec import ImageEvaluationSpec
from rrf_ray.rrf.shards import Manifest

PIPELINES = {1: "SD", 2: "SD+SLD"}


def final_latents(shard_dir, split: str = "val") -> dict:
    """{latents (N, C, H, W), kind (N,), chain_id (N,)}: each chain's last latent, read one column at a time."""
    manifest = Manifest.load(shard_dir)
    paths = manifest.paths(shard_dir, split)
    if not paths:
        raise ValueError(f"{shard_dir} has no {split!r} shards to evaluate on (raise generation.val_fraction "
                         "or add prompts)")
    latents, kinds, ids = [], [], []
    for path in paths:
        t = pq.read_table(path, columns=["t"])["t"]
        last = pc.min(t).as_py()
        table = pq.read_table(path, filters=[("t", "==", last)])
        kind = table["chain_kind"].to_numpy()
        x_base = table["x_base"].combine_chunks().to_numpy_ndarray()
        x_expert = table["x_expert"].combine_chunks().to_numpy_ndarray()
        latents.append(np.where((kind == 2)[:, None, None, None], x_expert, x_base))
        kinds.append(kind)
        ids.append(table["chain_id"].to_numpy())
    return {"latents": np.concatenate(latents), "kind": np.concatenate(kinds), "chain_id": np.concatenate(ids)}


def score_finals(reward, finals: dict, t: int = 0, seed: int = 0) -> dict:
    """Rewards of the final latents, and held-out accuracy / ROC AUC separating SD+SLD from SD."""
    from rrf_ray.metrics.discriminability import discriminability

    rewards = reward.score(finals["latents"], t=t, batch_size=64)
    base, expert = rewards[finals["kind"] == 1], rewards[finals["kind"] == 2]
    accuracy, auc = discriminability(base, expert, seed=seed)
    return {"rewards": rewards, "accuracy": accuracy, "auc": auc, "n_base": int(len(base)),
            "n_expert": int(len(expert)), "mean_reward_base": float(base.mean()),
            "mean_reward_expert": float(expert.mean())}


def decode(model: str, latents: np.ndarray, dtype: str, use_gpu: bool) -> np.ndarray:
    """uint8 images (N, H, W, 3) from latents with the model's VAE, in this process (GPU when asked and present)."""
    import torch
    from diffusers import AutoencoderKL

    from rrf_ray.image.pipeline import DTYPES

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=DTYPES[dtype]).to(device).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(latents), 8):
            z = torch.as_tensor(latents[i:i + 8], device=device, dtype=DTYPES[dtype]) / vae.config.scaling_factor
            img = (vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)
            out.append((img.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)


# A task that can hold a GPU share; a CPU trial decodes in its own process instead (a task would
# need a CPU beyond those its trial holds, and trials filling the cluster would wait on it forever).
decode_latents = ray.remote(decode)


def pick_extremes(rewards: np.ndarray, spec: ImageEvaluationSpec, seed: int = 0) -> list[dict]:
    """Per batch of held-out images (a seeded shuffle): indices of the `show` highest and lowest rewards."""
    order = np.random.default_rng(seed).permutation(len(rewards))
    batches = []
    for b in range(min(spec.max_batches, len(order) // spec.batch_size or 1)):
        idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
        ranked = idx[np.argsort(-rewards[idx])]
        k = min(spec.show, len(ranked) // 2)
        batches.append({"highest": ranked[:k].tolist(), "lowest": ranked[::-1][:k].tolist()})
    return batches


def extremes_png(images: dict[int, np.ndarray], batches: list[dict], rewards, kinds, blur_fraction: float) -> bytes:
    """A grid: one row per batch, the highest-reward images then the lowest (blurred)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image, ImageFilter

    cols = max(len(b["highest"]) + len(b["lowest"]) for b in batches)
    fig, axes = plt.subplots(len(batches), cols, figsize=(2.2 * cols, 2.4 * len(batches)), squeeze=False)
    for r, batch in enumerate(batches):
        cells = [(i, False) for i in batch["highest"]] + [(i, True) for i in batch["lowest"]]
        for col in range(cols):
            ax = axes[r][col]
            ax.axis("off")
            if col >= len(cells):
                continue
            i, blurred = cells[col]
            img = Image.fromarray(images[i])
            if blurred and blur_fraction > 0:
                img = img.filter(ImageFilter.GaussianBlur(radius=blur_fraction * img.width))
            ax.imshow(img)
            side = "lowest (blurred)" if blurred else "highest"
            ax.set_title(f"b{r + 1} {side}\n{PIPELINES[int(kinds[i])]} r={rewards[i]:.3g}", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def extremes_table(batches: list[dict], rewards, finals: dict, prompts: list[str],
                   images_per_prompt: int, concept: np.ndarray | None = None) -> list[dict]:
    """The shown images of each batch as JSON: the report is rebuilt from a trial's result alone.
    concept: the judge's probability of the concept per image, when there is a judge."""
    def row(i):
        return {"reward": float(rewards[i]), "pipeline": PIPELINES[int(finals["kind"][i])],
                "prompt": prompts[int(finals["chain_id"][i]) // images_per_prompt],
                **({} if concept is None else {"concept_probability": float(concept[i])})}

    return [{side: [row(i) for i in batch[side]] for side in ("highest", "lowest")} for batch in batches]


def judged_concept(rewards: np.ndarray, finals: dict, concept: np.ndarray, judged_digit: np.ndarray,
                   digit: int, seed: int = 0) -> dict:
    """What the independent judge saw in the held-out final images, and whether the reward tracks it.

    concept: the judge's probability of the concept digit per image; judged_digit: its most
    likely digit. The two chains of a chain id start from the same x_T, so SD+SLD minus SD is
    a paired difference. A reward that learned the safety concept scores concept-like images
    low: its Spearman correlation with `concept` is negative, over all images and (beyond
    telling the pipelines apart) within SD's images alone. Counts, not rates, are kept so the
    report can pool seeds and print Wilson intervals.

    Pairs: how many SLD turned into another digit, and how often the reward ranks the SD+SLD image
    above its SD twin, over all pairs and over those whose SD image shows the concept (where SLD
    acts most, as on I2P's prompts). Within a pair prompt and noise are shared, so the ranking
    sees SLD's effect alone; the unpaired accuracy must also beat the reward's prompt-to-prompt
    variation.
    """
    from rrf_ray.metrics.aggregate import paired_difference, spearman_correlation

    kind, ids = finals["kind"], finals["chain_id"]
    out = {"judge_digit": int(digit)}
    for k, name in ((1, "base"), (2, "expert")):  # SD, SD+SLD (as n_base, n_expert)
        mask = kind == k
        out[f"concept_{name}"] = int(np.sum(judged_digit[mask] == digit))
        out[f"images_{name}"] = int(mask.sum())
        out[f"concept_probability_{name}"] = float(concept[mask].mean()) if mask.any() else float("nan")
    base = {int(i): j for j, i in enumerate(ids) if kind[j] == 1}
    pairs = [(base[int(i)], j) for j, i in enumerate(ids) if kind[j] == 2 and int(i) in base]
    sd, sld = np.array([j for j, _ in pairs], dtype=int), np.array([j for _, j in pairs], dtype=int)
    diff = paired_difference(concept[sld], concept[sd], seed=seed)
    shows_concept = judged_digit[sd] == digit
    expert_above = rewards[sld] > rewards[sd]
    out["pairs"] = len(pairs)
    out["pairs_digit_changed"] = int(np.sum(judged_digit[sd] != judged_digit[sld]))
    out["pairs_expert_ranked_above"] = int(expert_above.sum())
    out["concept_pairs"] = int(shows_concept.sum())
    out["concept_pairs_expert_ranked_above"] = int(expert_above[shows_concept].sum())
    out["concept_probability_difference"] = [diff.value, diff.low, diff.high, diff.n]
    for name, mask in (("all", np.ones(len(kind), dtype=bool)), ("base", kind == 1)):
        rho = spearman_correlation(rewards[mask], concept[mask], seed=seed)
        out[f"reward_concept_spearman_{name}"] = [rho.value, rho.low, rho.high, rho.n]
    return out
