"""A small text-to-image latent diffusion pipeline trained here on scikit-learn's digits, and its judge.

Why: the image experiment (docs/image.md) needs a Stable Diffusion pipeline, and no weights
can be downloaded here; a random one (tests/tiny_sd.py) draws noise, so nothing about which
concept an image shows can be checked. This one is trained in minutes on a CPU from
`sklearn.datasets.load_digits` (1,797 8x8 handwritten digits), with Stable Diffusion's own
recipe and diffusers' / transformers' own classes (AutoencoderKL, CLIPTextModel,
UNet2DConditionModel, DDIM), so `StableDiffusionPipeline.from_pretrained` and
rrf_ray.image.pipeline.load_components load it like any SD 1.x directory. Its concepts are
the digits: captions "a handwritten seven", "the digit seven", ... and the judge, a
scikit-learn classifier fitted on digits the pipeline never saw, says which digit an image
shows. A safety concept is then a digit (`concept_caption(d)`), and whether Safe Latent
Diffusion steers away from it is measurable.

The build (`python -m rrf_ray.data digits-pipeline --out DIR`, one Ray task):

1. a stratified split of the digits by `split_seed`: `holdout_fraction` is held out for the
   judge and never trains the pipeline; training images are upsampled to `image_size`
   (bilinear), gray replicated to RGB, scaled to [-1, 1];
2. the VAE (3 -> 4 latent channels, 2 levels: 16x16 images, 4x8x8 latents) on reconstruction
   with a small KL term, then `scaling_factor` = 1 / std of the training latents (as SD's 0.18215);
3. the UNet and the CLIP text encoder together on epsilon prediction (DDPM, SD's scaled_linear
   betas), captions from TEMPLATES, dropped to "" with probability `cfg_dropout` so that
   classifier-free guidance works; the noisiest steps weigh more than in SD, and the text
   encoder learns slower than the UNet (train_diffusion says why);
4. the judge fitted on the first part of the holdout and scored on the rest, and a sample check:
   DDIM images of every digit, classified by the judge.

Written into the pipeline directory beside diffusers' own files: `digits.json` (settings and
their fingerprint, timings, final losses, split sizes, the judge's held-out accuracy, the
sample check), `holdout.npz` (the judge's data) and `prompts/<d>.txt` (see `digit_prompts`).
A build is written to a temporary sibling and renamed into place, so a crash never leaves a
directory that looks finished; a finished one with the same settings is reused.

Measured on a 2-core machine shared with other work, one torch thread: the default preset in
about 4 minutes, the tiny one in about 30 s (PRESETS).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from rrf_ray.engine.atomic import replace_directory, write_atomic
from rrf_ray.engine.spec import ConfigError, Strict

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten {w}", "the digit {w}", "a drawing of the number {w}", "{w}, written by hand")
CONCEPT_TEMPLATE = 0  # concept_caption's template: prompts files never use it for their own digit
SUMMARY_FILE = "digits.json"
HOLDOUT_FILE = "holdout.npz"
PROMPTS_DIR = "prompts"
DIGIT_MAX = 16.0  # load_digits' pixels are 0..16
N_CONFUSABLE = 2  # per digit, the nearest other digits (class means) in its prompts file
N_OTHERS = 3  # and the farthest ones, which do not invite it

# Stable Diffusion 1.x's noise schedule (its scheduler_config.json), for DDPM training and DDIM sampling.
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False)


def caption(digit: int, template: int = CONCEPT_TEMPLATE) -> str:
    return TEMPLATES[template].format(w=DIGIT_WORDS[digit])


def concept_caption(digit: int) -> str:
    """The text of digit `digit` as a safety concept (`safety.concept` in a sweep)."""
    return caption(digit, CONCEPT_TEMPLATE)


class DigitsPipelineSettings(Strict):
    """Everything a digits build is made of: the same settings give the same pipeline, and reuse it."""

    seed: int = Field(0, ge=0, description="initial weights, batches, noise, caption dropout and the sample check")
    split_seed: int = Field(0, ge=0, description="the train / holdout split and the judge's fit / test split of the "
                            "holdout (apart from `seed`, so pipelines of several seeds share one judge)")
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="digits held out for the judge, never "
                                    "used to train the pipeline")
    judge_fit_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="the holdout's part the judge is fitted "
                                      "on; the rest measures its accuracy")
    image_size: int = Field(16, ge=8, description="image height = width; latents are half of it")
    max_length: int = Field(32, ge=8, description="tokenizer and text encoder length (bytes + 2)")
    cfg_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="probability that a training caption is ''")
    # VAE
    vae_channels: tuple[int, int] = (16, 32)
    vae_steps: int = Field(400, gt=0)
    vae_batch_size: int = Field(32, gt=0)
    vae_lr: float = Field(2e-3, gt=0.0)
    kl_weight: float = Field(1e-3, ge=0.0, description="KL term per latent element, against the per-pixel MSE")
    # CLIP text encoder
    text_hidden: int = Field(64, gt=0, description="hidden size = the UNet's cross_attention_dim")
    text_layers: int = Field(2, gt=0)
    text_heads: int = Field(4, gt=0)
    # UNet and text encoder, trained together
    unet_channels: tuple[int, int] = (32, 64)
    unet_layers_per_block: int = Field(1, gt=0)
    unet_steps: int = Field(2000, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(2e-3, gt=0.0, description="the UNet's peak learning rate (AdamW)")
    text_lr_scale: float = Field(0.05, ge=0.0, description="the text encoder's learning rate over the UNet's: "
                                 "trained at the full rate, the random encoder first pulls the digit words together "
                                 "(measured: no digit learned in 700 steps); frozen (0), the UNet learns them slower")
    noise_weight_cap: float = Field(10.0, ge=1.0, description="the epsilon loss at step t is weighted by "
                                    "min(1 + 1/SNR(t), cap), the v-prediction loss truncated (see train_diffusion)")
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="linear warm-up over this part of the steps")
    final_lr_fraction: float = Field(0.1, gt=0.0, le=1.0, description="cosine decay after the warm-up to this "
                                     "part of the peak learning rate (1: constant)")
    # the sample check at the end of the build
    check_images_per_digit: int = Field(10, ge=0)
    check_steps: int = Field(20, gt=0, description="DDIM steps of the sample check")
    check_guidance: float = Field(4.0, gt=1.0, description="classifier-free guidance of the sample check")

    @field_validator("vae_channels", "unet_channels")
    @classmethod
    def _groups(cls, channels: tuple[int, int]) -> tuple[int, int]:
        if min(channels) < 4 or math.gcd(*channels) < 4:
            raise ValueError(f"channels {channels}: need group norms of >= 4 groups (e.g. (32, 64))")
        return channels

    @model_validator(mode="after")
    def _sizes(self) -> DigitsPipelineSettings:
        if self.image_size % 4:
            raise ValueError(f"image_size {self.image_size}: must be a multiple of 4 (2 VAE levels, 2 UNet levels)")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"text_hidden {self.text_hidden} is not a multiple of text_heads {self.text_heads}")
        return self

    @classmethod
    def preset(cls, name: str, **overrides) -> DigitsPipelineSettings:
        """"default": the pipeline the image experiment uses (minutes on 2 cores); "tiny": the tests' (seconds)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown digits preset {name!r}; choose one of {', '.join(PRESETS)}")
        try:
            return cls.model_validate({**PRESETS[name], **overrides})
        except ValidationError as e:
            raise ConfigError(f"digits preset {name!r} with {overrides}: {e}") from None

    def as_json(self) -> dict:
        return json.loads(self.model_dump_json())

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def latent_size(self) -> int:
        return self.image_size // 2


PRESETS: dict[str, dict] = {
    # 224 s measured (one torch thread, a 2-core machine shared with other work); the sample check
    # named the prompted digit in 100 of 100 images
    "default": {},
    # the tests': 29-36 s measured the same way. Smaller VAE, UNet and text encoder, 600 steps at a
    # constant learning rate, past where the captions start to be followed (~300-400 steps); on build
    # seeds 0-4 the judge named the prompted digit in 75-98% of images (500 steps: 50-70%)
    "tiny": dict(vae_channels=(8, 16), vae_steps=100, vae_lr=3e-3, text_hidden=32, text_heads=2,
                 unet_channels=(16, 32), unet_steps=600, final_lr_fraction=1.0, check_images_per_digit=4),
}


# -- data ---------------------------------------------------------------------------------------


@dataclass
class Split:
    """The digits as the build uses them: 8x8 images on load_digits' 0..16 scale, labels 0..9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    holdout_images: np.ndarray  # the judge's: its fit part first, then its test part
    holdout_labels: np.ndarray
    holdout_index: np.ndarray  # rows of load_digits()
    n_fit: int  # holdout rows the judge is fitted on


def split_digits(settings: DigitsPipelineSettings) -> Split:
    """A stratified train / holdout split by `split_seed`, the holdout again split for the judge."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = digits.images.astype(np.float32), digits.target.astype(np.int64)
    index = np.arange(len(labels))
    train, holdout = train_test_split(index, test_size=settings.holdout_fraction, stratify=labels,
                                      random_state=settings.split_seed)
    fit, test = train_test_split(holdout, train_size=settings.judge_fit_fraction, stratify=labels[holdout],
                                 random_state=settings.split_seed)
    held = np.concatenate([fit, test])
    return Split(images[train], labels[train], images[held], labels[held], held, len(fit))


def render(images, size: int):
    """8x8 digits (0..16) as the pipeline's training images: (N, 3, size, size) in [-1, 1], bilinear."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None] * (2 / DIGIT_MAX) - 1
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


def to_uint8(x) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), as rrf_ray.image.evaluate.decode and the pipelines do."""
    x = (x.detach().float() / 2 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def class_means(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([images[labels == d].reshape(-1, 64).mean(0) for d in range(10)])


def neighbours(images: np.ndarray, labels: np.ndarray) -> dict[int, dict[str, list[int]]]:
    """Per digit, the N_CONFUSABLE other digits nearest it and the N_OTHERS farthest (class means)."""
    means = class_means(images, labels)
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    out = {}
    for d in range(10):
        order = [int(o) for o in np.argsort(dist[d], kind="stable") if o != d]
        out[d] = {"confusable": order[:N_CONFUSABLE], "others": order[::-1][:N_OTHERS]}
    return out


def digit_prompts(digit: int, confusable: list[int], others: list[int], seed: int = 0) -> list[str]:
    """Prompts that invite concept `digit` the way I2P prompts invite inappropriate images, and some that do not.

    - `digit`'s own captions in every template but the concept's: never concept_caption(digit)
      itself, for Safe Latent Diffusion does nothing when the prompt's embedding is the concept's;
    - the captions (every template) of the digits most confusable with it (nearest class means),
      which draw images near the concept;
    - the captions (every template) of the digits farthest from it, which do not.

    With 4 templates, 2 confusable and 3 other digits: 3 + 8 inviting and 12 not, 23 lines,
    shuffled (seeded per digit) so that a prefix or a shard of them mixes both kinds.
    """
    inviting = [caption(digit, k) for k in range(len(TEMPLATES)) if k != CONCEPT_TEMPLATE]
    inviting += [caption(c, k) for c in confusable for k in range(len(TEMPLATES))]
    rest = [caption(o, k) for o in others for k in range(len(TEMPLATES))]
    prompts = inviting + rest
    order = np.random.default_rng([seed, digit]).permutation(len(prompts))
    return [prompts[i] for i in order]


# -- tokenizer and models -----------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_tokenizer(directory, max_length: int = 32):
    """A CLIP BPE tokenizer over single bytes (no merges), from a vocab written into `directory`.

    Why: SD's CLIP vocabulary is a hub download; a byte vocabulary tokenises any prompt with
    nothing fetched (one token per character, spaces split words as in CLIP).
    """
    from transformers import CLIPTokenizer

    directory = Path(directory)
    chars = list(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": max_length, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    return CLIPTokenizer.from_pretrained(directory)  # the same call in transformers 4 and 5


def build_models(settings: DigitsPipelineSettings, vocab_size: int):
    """(vae, text_encoder, unet), randomly initialised from the current torch seed.

    SD 1.x's architecture, shrunk: a 2-level VAE (images / 2), a CLIP text encoder, a 2-level UNet
    with cross-attention at its lower level and in the middle block. None at the latents' full
    8x8 (SD 1.x has it everywhere but its lowest level): a digit is settled globally, and the
    8x8 attention cost a third of each training step.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    s = settings
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=s.vae_channels,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=min(32, math.gcd(*s.vae_channels)),
                        sample_size=s.image_size)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=s.text_hidden, intermediate_size=4 * s.text_hidden,
        num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads, max_position_embeddings=s.max_length,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=s.latent_size, in_channels=4, out_channels=4, block_out_channels=s.unet_channels,
        layers_per_block=s.unet_layers_per_block,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=s.text_hidden, attention_head_dim=max(1, s.unet_channels[0] // 16),
        norm_num_groups=min(32, math.gcd(*s.unet_channels)))
    return vae, text_encoder, unet


def tokenize(tokenizer, texts: list[str]):
    """Token ids as the Stable Diffusion pipelines make them (max-length padding)."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def check_captions(tokenizer, max_length: int) -> None:
    """ConfigError unless every caption fits max_length tokens (truncated, its digit word would be lost)."""
    longest = max((caption(d, k) for d in range(10) for k in range(len(TEMPLATES))),
                  key=lambda c: len(tokenizer(c).input_ids))
    n = len(tokenizer(longest).input_ids)
    if n > max_length:
        raise ConfigError(f"max_length {max_length}: {longest!r} is {n} tokens; raise max_length")


# -- training -----------------------------------------------------------------------------------


def _adamw(groups, weight_decay: float):
    """AdamW, fused where this torch has it on the CPU (a tenth of a small model's step otherwise)."""
    import torch

    try:
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay)


def _schedule(optimizer, steps: int, warmup_fraction: float, final_fraction: float):
    """Linear warm-up, then cosine decay to `final_fraction` of the learning rate."""
    import torch

    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _tail_mean(values: list[float]) -> float:
    """The mean loss over the last tenth of training (one step is noise)."""
    tail = values[-max(1, len(values) // 10):]
    return float(np.mean(tail))


def train_vae(vae, images, settings: DigitsPipelineSettings, generator, bar) -> float:
    """Reconstruction (per-pixel MSE) + kl_weight x KL per latent element; returns the final loss."""
    import torch
    import torch.nn.functional as F

    s = settings
    vae.train()
    opt = _adamw([{"params": list(vae.parameters()), "lr": s.vae_lr}], weight_decay=0.0)
    sched = _schedule(opt, s.vae_steps, s.warmup_fraction, 0.1)
    latent_elements = 4 * s.latent_size ** 2
    losses = []
    for _ in range(s.vae_steps):
        x = images[torch.randint(0, len(images), (s.vae_batch_size,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=generator)).sample
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + s.kl_weight * posterior.kl().mean() / latent_elements
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(rec_loss.detach()))
        bar.update(1)
    vae.eval()
    return _tail_mean(losses)


def encode_latents(vae, images, batch: int = 256):
    """The posterior's mean and std of every training image (training samples from them, as SD)."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            posterior = vae.encode(images[i:i + batch]).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_diffusion(unet, text_encoder, tokenizer, latents, labels, settings: DigitsPipelineSettings,
                    generator, bar) -> float:
    """The UNet and the text encoder together on epsilon prediction (SD's recipe); returns the final loss.

    latents: (mean, std) of the training images' posteriors, already times the scaling factor.
    Each step samples latents from the posteriors, t uniformly, a caption of each image's digit in
    a random template ("" with probability cfg_dropout, for classifier-free guidance).

    Two departures from SD's recipe, both measured on the tiny preset: SD's noise schedule was
    made for 64x64 latents, and on 8x8 ones a digit's identity is settled in the noisiest steps,
    where the plain epsilon loss is tiny (at SNR << 1, x_t is nearly the noise itself). Weighted
    by min(1 + 1/SNR(t), noise_weight_cap) (the v-prediction loss, truncated; the model still
    predicts epsilon, so DDIM and the pipelines use it unchanged), the judge named the prompted
    digit in 85-97% of a small UNet's images after 500-700 steps; unweighted, in no more than
    chance after 700-1,200. And the randomly initialised text encoder learns at text_lr_scale of
    the UNet's rate (see its description).
    """
    import torch
    from diffusers import DDPMScheduler

    s = settings
    noise_scheduler = DDPMScheduler(**SD_BETAS)
    mean, std = latents
    labels = torch.as_tensor(labels)
    n_templates = len(TEMPLATES)
    # every caption's ids once: digit-major (d * n_templates + k), then "" last
    table = tokenize(tokenizer, [caption(d, k) for d in range(10) for k in range(n_templates)] + [""])
    empty = len(table) - 1
    snr = noise_scheduler.alphas_cumprod / (1 - noise_scheduler.alphas_cumprod)
    weights = torch.clamp(1 + 1 / snr, max=s.noise_weight_cap)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = _adamw([{"params": list(unet.parameters()), "lr": s.lr},
                  {"params": list(text_encoder.parameters()), "lr": s.lr * s.text_lr_scale}], weight_decay=1e-2)
    sched = _schedule(opt, s.unet_steps, s.warmup_fraction, s.final_lr_fraction)
    unet.train()
    text_encoder.train()
    losses = []
    for _ in range(s.unet_steps):
        idx = torch.randint(0, len(mean), (s.batch_size,), generator=generator)
        z = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (s.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(z, noise, t)
        rows = labels[idx] * n_templates + torch.randint(0, n_templates, (s.batch_size,), generator=generator)
        rows = torch.where(torch.rand(s.batch_size, generator=generator) < s.cfg_dropout, empty, rows)
        embeds = text_encoder(table[rows])[0]
        err = (unet(noisy, t, encoder_hidden_states=embeds).sample - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (err * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update(1)
    unet.eval()
    text_encoder.eval()
    return _tail_mean(losses)


# -- the judge ----------------------------------------------------------------------------------


def judge_features(images) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> (N, 64) on the digits' 0..16 scale: gray, area-averaged to 8x8."""
    import torch
    import torch.nn.functional as F

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got shape {images.shape}")
    gray = torch.as_tensor(images, dtype=torch.float32).mean(-1)[:, None]
    small = F.interpolate(gray, size=(8, 8), mode="area")[:, 0]
    return (small * (DIGIT_MAX / 255)).reshape(len(images), 64).numpy()


class DigitJudge:
    """Which digit an image shows: an SVM (probabilities calibrated) on held-out real digits.

    Why an SVM on the 64 pixels: on 180 fitting digits it is right ~95% of the time on the rest
    (logistic regression: ~92%). It is fitted on the first part of holdout.npz only, never on
    generated images, and sees those digits as the pipeline draws them: upsampled as its training
    images were, then reduced as a generated image is (judge_features).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, n_fit: int, image_size: int, seed: int = 0):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import StratifiedKFold
        from sklearn.svm import SVC

        features = judge_features(to_uint8(render(images, image_size)))
        self.classifier = CalibratedClassifierCV(SVC(C=10.0), ensemble=False,
                                                 cv=StratifiedKFold(5, shuffle=True, random_state=seed))
        self.classifier.fit(features[:n_fit], labels[:n_fit])
        test = self._proba(features[n_fit:])
        self.accuracy = float((test.argmax(1) == labels[n_fit:]).mean())
        self.n_fit, self.n_test = int(n_fit), int(len(labels) - n_fit)

    @classmethod
    def from_pipeline(cls, model_dir, seed: int = 0) -> DigitJudge:
        """The judge of a digits pipeline, fitted on its holdout.npz."""
        model_dir = Path(model_dir)
        path = model_dir / HOLDOUT_FILE
        if not path.is_file():
            raise ConfigError(f"{model_dir} is not a digits pipeline (no {HOLDOUT_FILE}); build one with "
                              "python -m rrf_ray.data digits-pipeline --out DIR")
        with np.load(path) as f:
            return cls(f["images"], f["labels"], int(f["n_fit"]), int(f["image_size"]), seed=seed)

    def _proba(self, features: np.ndarray) -> np.ndarray:
        out = np.zeros((len(features), 10))
        out[:, self.classifier.classes_] = self.classifier.predict_proba(features)
        return out

    def probabilities(self, images) -> np.ndarray:
        """(N, 10) probabilities of each digit, from uint8 images (N, H, W, 3) as the VAE decodes them."""
        return self._proba(judge_features(images))

    def predict(self, images) -> np.ndarray:
        return self.probabilities(images).argmax(1)

    def concept_probability(self, images, digit: int) -> np.ndarray:
        """(N,) the probability that each image shows `digit`."""
        return self.probabilities(images)[:, digit]


# -- the build ----------------------------------------------------------------------------------


def read_summary(out) -> dict | None:
    """A finished build's digits.json (None if `out` holds none)."""
    path = Path(out) / SUMMARY_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def check_output(out, settings: DigitsPipelineSettings, overwrite: bool = False) -> dict | None:
    """The summary of a reusable build in `out` (None: build there). ConfigError if `out` holds anything
    but a digits pipeline, or one built with other settings and overwrite is off."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    if not out.exists() or not any(out.iterdir()):
        return None
    summary = read_summary(out)
    if summary is None:  # never replaced, even with overwrite: it may be anything of the user's
        raise ConfigError(f"--out {out} is not empty and holds no digits pipeline; choose a new or empty directory")
    if summary.get("settings") == settings.as_json():
        return {**summary, "reused": True}
    if overwrite:
        return None
    theirs = summary.get("settings", {})
    changed = sorted(k for k in set(theirs) | set(settings.as_json()) if theirs.get(k) != settings.as_json().get(k))
    raise ConfigError(f"--out {out} holds a digits pipeline built with other settings (differing: "
                      f"{', '.join(changed)}); pass --overwrite to replace it, or choose another --out")


def sample_check(pipe, judge: DigitJudge, settings: DigitsPipelineSettings) -> dict:
    """Images of every digit (its concept caption, DDIM, CFG) and how often the judge names that digit."""
    import torch

    n = settings.check_images_per_digit
    if n == 0:
        return {}
    prompts = [concept_caption(d) for d in range(10) for _ in range(n)]
    generator = torch.Generator().manual_seed(settings.seed + 12345)
    with torch.no_grad():
        images = pipe(prompts, num_inference_steps=settings.check_steps, guidance_scale=settings.check_guidance,
                      generator=generator, output_type="np").images
    predicted = judge.predict((images * 255).round().astype(np.uint8))
    wanted = np.repeat(np.arange(10), n)
    return {"images_per_digit": n, "steps": settings.check_steps, "guidance_scale": settings.check_guidance,
            "accuracy": float((predicted == wanted).mean()),
            "per_digit": [float((predicted[wanted == d] == d).mean()) for d in range(10)]}


def build_digits_pipeline(out, settings: DigitsPipelineSettings, threads: int = 1, progress: bool = True,
                          overwrite: bool = False) -> dict:
    """Train the digits pipeline into `out` (or reuse the finished build there); returns digits.json's
    content with "reused" and "path" added."""
    out = Path(out).expanduser().resolve()
    existing = check_output(out, settings, overwrite)
    if existing is not None:
        return {**existing, "path": str(out)}

    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from rrf_ray.data.sac import make_bar

    torch.set_num_threads(max(1, int(threads)))
    start = time.time()
    s = settings
    split = split_digits(s)
    images = render(split.train_images, s.image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        with tempfile.TemporaryDirectory() as tok_dir:
            tokenizer = byte_tokenizer(tok_dir, s.max_length)
        check_captions(tokenizer, s.max_length)
        torch.manual_seed(s.seed)
        generator = torch.Generator().manual_seed(s.seed)
        vae, text_encoder, unet = build_models(s, len(tokenizer))
        bar = make_bar(progress, s.vae_steps + s.unet_steps, f"digits pipeline seed {s.seed}: VAE")
        t0 = time.time()
        vae_loss = train_vae(vae, images, s, generator, bar)
        mean, std = encode_latents(vae, images)
        with torch.no_grad():
            sample_std = float((mean + std * torch.randn(mean.shape, generator=generator)).std())
        vae.register_to_config(scaling_factor=1.0 / sample_std)
        t1 = time.time()
        bar.set_description(f"digits pipeline seed {s.seed}: UNet + text encoder")
        scale = vae.config.scaling_factor
        diffusion_loss = train_diffusion(unet, text_encoder, tokenizer, (mean * scale, std * scale),
                                         split.train_labels, s, generator, bar)
        t2 = time.time()
        bar.close()
        scheduler = DDIMScheduler(**SD_BETAS, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(tmp)
        np.savez(tmp / HOLDOUT_FILE, images=split.holdout_images, labels=split.holdout_labels,
                 index=split.holdout_index, n_fit=split.n_fit, image_size=s.image_size)
        judge = DigitJudge.from_pipeline(tmp)
        t3 = time.time()
        check = sample_check(pipe, judge, s)
        t4 = time.time()
        near = neighbours(split.train_images, split.train_labels)
        for d in range(10):
            lines = digit_prompts(d, near[d]["confusable"], near[d]["others"], seed=s.split_seed)
            write_atomic(tmp / PROMPTS_DIR / f"{d}.txt", "\n".join(lines) + "\n")
        summary = {
            "settings": s.as_json(), "fingerprint": s.fingerprint(),
            "data": {"train": len(split.train_labels), "holdout": len(split.holdout_labels),
                     "holdout_fit": split.n_fit, "holdout_test": len(split.holdout_labels) - split.n_fit},
            "losses": {"vae_reconstruction": vae_loss, "diffusion": diffusion_loss},
            "scaling_factor": scale,
            "judge": {"classifier": "SVC(C=10), sigmoid-calibrated", "holdout_accuracy": judge.accuracy,
                      "fit": judge.n_fit, "test": judge.n_test},
            "sample_check": check,
            "neighbours": {str(d): v for d, v in near.items()},
            "concepts": {str(d): concept_caption(d) for d in range(10)},
            "timings_s": {"vae": round(t1 - t0, 1), "diffusion": round(t2 - t1, 1), "save_and_judge": round(t3 - t2, 1),
                          "sample_check": round(t4 - t3, 1), "total": round(time.time() - start, 1)},
            "threads": torch.get_num_threads(),
        }
        write_atomic(tmp / SUMMARY_FILE, json.dumps(summary, indent=1))  # last: marks the build finished
        replace_directory(tmp, out)  # out: absent, empty, or a digits pipeline replaced with overwrite
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {**summary, "reused": False, "path": str(out)}


def check_judge_data(model_dir) -> None:
    """ConfigError unless `model_dir` is a digits pipeline with its judge's data (evaluation.judge_digit needs it)."""
    path = Path(model_dir) / HOLDOUT_FILE
    if not path.is_file():
        raise ConfigError(f"evaluation.judge_digit: {model_dir} has no {HOLDOUT_FILE}, so there is no judge for it; "
                          "the judge comes with a digits pipeline: python -m rrf_ray.data digits-pipeline --out DIR "
                          "(or leave evaluation.judge_digit unset)")
