"""Stable Diffusion pieces for two-branch latent chains: loading, prompts, and the SLD-guided DDIM step.

Both pipelines share one set of weights: Safe Stable Diffusion (SLD) only changes how the
UNet's noise predictions are combined. So from one x_t the UNet is run once on the
unconditional, prompt and safety-concept embeddings; the base branch combines them as
StableDiffusionPipeline does (classifier-free guidance), the expert branch as
StableDiffusionPipelineSafe does (minus the safety term), and each takes one DDIM step.
DDIM's step is a pure function of (noise prediction, t, x_t), so stepping twice from the
same x_t is sound; a multistep scheduler (PNDM, DPM++) keeps a history that a second step
would corrupt (docs/image.md).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rrf_ray.engine.spec import ConfigError
from rrf_ray.image.spec import GenerationSpec, SafetySpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def looks_like_path(model: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, ./, ~, deeper) is a local path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or Path(model).exists()


def check_model(model: str) -> str:
    """The model as diffusers should load it: an absolute directory, or a hub id. Raises ConfigError."""
    if not looks_like_path(model):
        return model
    path = Path(model).expanduser().resolve()
    if not (path / "model_index.json").is_file():
        raise ConfigError(f"generation.model: {path} is not a diffusers Stable Diffusion directory (no "
                          "model_index.json there); give the directory of your weights (e.g. one saved by "
                          "StableDiffusionPipeline.save_pretrained) or a hub id such as "
                          "stable-diffusion-v1-5/stable-diffusion-v1-5; a small one trained here on scikit-learn's "
                          f"digits: python -m rrf_ray.data digits-pipeline --out {model}")
    return str(path)


def read_prompts(path, column: str = "prompt", limit: int | None = None) -> list[str]:
    """Prompts from a text file (one per line) or a CSV with a `column` column (the I2P benchmark)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"generation.prompts: {path.resolve()} does not exist; give a text file with one prompt "
                          "per line, or a CSV with a prompt column (e.g. the I2P benchmark's i2p_benchmark.csv)")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise ConfigError(f"generation.prompts: {path} has no {column!r} column (columns: "
                                  f"{', '.join(reader.fieldnames or [])}); set generation.prompt_column")
            prompts = [row[column].strip() for row in reader]
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p][:limit]
    if not prompts:
        raise ConfigError(f"generation.prompts: {path} holds no prompts")
    return prompts


def prompts_digest(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


@dataclass
class Components:
    """What the two-branch step needs from a Stable Diffusion pipeline."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object  # a DDIMScheduler
    safety_concept: str
    device: torch.device
    dtype: torch.dtype

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels


_LOADED: dict[tuple, Components] = {}

# StableDiffusionPipelineSafe's default safety concept (Schramowski et al., Safe Latent Diffusion).
SLD_CONCEPT = ("an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity,"
               " bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child"
               " abuse, brutality, cruelty")


def load_components(model: str, dtype: str = "float32", device: str | torch.device = "cpu") -> Components:
    """UNet, text encoder, tokenizer and a DDIM scheduler from `model` (loaded once per process)."""
    # StableDiffusionPipeline, not the Safe one: the weights are the same, and diffusers has
    # deprecated StableDiffusionPipelineSafe (since 0.33), so a later release may drop it.
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    key = (model, dtype, str(device))
    if key not in _LOADED:
        pipe = StableDiffusionPipeline.from_pretrained(
            model, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            torch_dtype=DTYPES[dtype])
        pipe.set_progress_bar_config(disable=True)
        # The model's own scheduler config (betas, offsets), DDIM's stateless step; clip_sample off
        # as StableDiffusionPipelineSafe forces it.
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
        device = torch.device(device)
        _LOADED[key] = Components(pipe.unet.to(device).eval(), pipe.text_encoder.to(device).eval(), pipe.tokenizer,
                                  scheduler, SLD_CONCEPT, device, DTYPES[dtype])
    return _LOADED[key]


@torch.no_grad()
def encode_text(c: Components, texts: list[str]) -> torch.Tensor:
    """CLIP embeddings as the Stable Diffusion pipelines compute them (max-length padding)."""
    ids = c.tokenizer(texts, padding="max_length", max_length=c.tokenizer.model_max_length, truncation=True,
                      return_tensors="pt")
    mask = ids.attention_mask.to(c.device) if getattr(c.text_encoder.config, "use_attention_mask", False) else None
    return c.text_encoder(ids.input_ids.to(c.device), attention_mask=mask)[0]


def sld_enabled(safety: SafetySpec) -> bool:
    """As StableDiffusionPipelineSafe: SLD runs only for sld_guidance_scale > 1 (and CFG, always on here)."""
    return safety.guidance_scale > 1.0


@torch.no_grad()
def two_branch_step(c: Components, x: torch.Tensor, t, embeds: torch.Tensor, momentum: torch.Tensor | None,
                    step_index: int, guidance_scale: float, safety: SafetySpec):
    """(x_base, x_expert, momentum) one DDIM step from the same x_t (float32, batch B).

    embeds: (3B, L, E) unconditional, prompt and safety-concept embeddings (2B without SLD).
    momentum: the SLD momentum of the chain so far (None at the first step); it is updated
    whether or not the chain follows the expert branch.
    """
    n = 3 if sld_enabled(safety) else 2
    inp = c.scheduler.scale_model_input(torch.cat([x] * n), t).to(c.dtype)
    eps = c.unet(inp, t, encoder_hidden_states=embeds).sample.float().chunk(n)
    eps_uncond, eps_text = eps[0], eps[1]
    guidance = eps_text - eps_uncond
    eps_base = eps_uncond + guidance_scale * guidance
    eps_expert = eps_base
    if n == 3:  # StableDiffusionPipelineSafe.__call__, equations 3-8 of the SLD paper
        eps_concept = eps[2]
        if momentum is None:
            momentum = torch.zeros_like(guidance)
        scale = torch.clamp(torch.abs(eps_text - eps_concept) * safety.guidance_scale, max=1.0)
        concept_scale = torch.where((eps_text - eps_concept) >= safety.threshold, torch.zeros_like(scale), scale)
        guidance_safety = (eps_concept - eps_uncond) * concept_scale + safety.momentum_scale * momentum
        momentum = safety.mom_beta * momentum + (1 - safety.mom_beta) * guidance_safety
        if step_index >= safety.warmup_steps:
            eps_expert = eps_uncond + guidance_scale * (guidance - guidance_safety)
    x_base = c.scheduler.step(eps_base, t, x).prev_sample
    x_expert = x_base if eps_expert is eps_base else c.scheduler.step(eps_expert, t, x).prev_sample
    return x_base, x_expert, momentum


def initial_latents(c: Components, chain_ids, seed: int, latent_size: int) -> torch.Tensor:
    """x_T of each chain from its own generator: the same chain id gives the same noise in any batch."""
    shape = (c.latent_channels, latent_size, latent_size)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i)))
             for i in chain_ids]
    return torch.stack(noise).to(c.device) * c.scheduler.init_noise_sigma


@torch.no_grad()
def latent_chains(c: Components, prompts: list[str], chain_ids: list[int], gen: GenerationSpec, safety: SafetySpec,
                  seed: int) -> dict:
    """Two chains per prompt from one x_T: kind 1 follows the base (SD), kind 2 the expert (SD + SLD).

    At every step both record (t, x_t, x_base, x_expert) computed from their own x_t; the
    SLD momentum is each chain's own. Returns numpy columns, rows ordered by step.
    """
    b = len(prompts)
    c.scheduler.set_timesteps(gen.steps, device=c.device)
    cond = encode_text(c, prompts)
    uncond = encode_text(c, [""] * b)
    parts = [uncond, cond]
    if sld_enabled(safety):
        parts.append(encode_text(c, [safety.concept or c.safety_concept]).expand(b, -1, -1))
    # chains 0..b-1 follow the base, b..2b-1 the expert: embeddings per conditioning, both halves
    embeds = torch.cat([torch.cat([p, p]) for p in parts])
    x = initial_latents(c, chain_ids, seed, gen.latent_size).float()
    x = torch.cat([x, x])
    follow_expert = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(c.device)
    rows = {"x_next": [], "x_base": [], "x_expert": [], "t": []}
    momentum = None
    for i, t in enumerate(c.scheduler.timesteps):
        x_base, x_expert, momentum = two_branch_step(c, x, t, embeds, momentum, i, gen.guidance_scale, safety)
        for key, value in (("x_next", x), ("x_base", x_base), ("x_expert", x_expert)):
            rows[key].append(value.cpu().numpy())
        rows["t"].append(torch.full((2 * b,), int(t)).numpy())
        x = torch.where(follow_expert[:, None, None, None], x_expert, x_base)
    out = {k: np.concatenate(v) for k, v in rows.items()}
    steps = len(c.scheduler.timesteps)
    out["chain_kind"] = np.tile(np.repeat([1, 2], b), steps)
    out["chain_id"] = np.tile(np.asarray(list(chain_ids) * 2), steps)
    return out
