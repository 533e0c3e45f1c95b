"""The image experiment's sweep spec (`experiment: image`, e.g. rrf_ray/sweeps/sd.yaml).

The weights are the user's: `generation.model` is a local diffusers Stable Diffusion
directory or a Hugging Face hub id; the prompts come from a local file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rrf_ray.engine.spec import ResourceSpec, Strict
from rrf_ray.rrf.spec import LatentRewardSpec


class GenerationSpec(Strict):
    """Latent chains (docs/image.md): from each x_t, the next latent without and with safety guidance."""

    model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                       description="a diffusers Stable Diffusion directory (model_index.json) or a hub id")
    prompts: str = Field("i2p_benchmark.csv", description="one prompt per line, or a CSV with a prompt column "
                         "(the I2P benchmark, huggingface.co/datasets/AIML-TUDA/i2p)")
    prompt_column: str = Field("prompt", description="the prompt column of a CSV prompts file")
    max_prompts: int | None = Field(None, gt=0, description="use the first N prompts (default: all)")
    images_per_prompt: int = Field(1, gt=0, description="chains (initial noises) per prompt")
    steps: int = Field(50, gt=0, description="DDIM steps per chain")
    guidance_scale: float = Field(7.5, gt=1.0, description="classifier-free guidance (SLD needs it > 1)")
    latent_size: int = Field(64, gt=0, description="latent height = width (64: 512 px for SD 1.x)")
    batch_size: int = Field(4, gt=0, description="prompts per UNet call (x 2 chains x 3 conditionings)")
    prompts_per_shard: int = Field(16, gt=0, description="prompts per Ray task and Parquet shard")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of shards (prompts) held out")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="UNet/text encoder/VAE dtype (float16 on GPUs); guidance and DDIM steps run in float32")
    cpus_per_task: float = Field(1.0, gt=0.0)
    gpus_per_task: float = Field(1.0, ge=0.0, description="GPU share per generation task when resources.use_gpu")


class SafetySpec(Strict):
    """Safe Latent Diffusion (SLD) guidance; defaults are diffusers' SafetyConfig.MEDIUM.

    As in StableDiffusionPipelineSafe, guidance_scale <= 1 disables it (both branches equal).
    """

    guidance_scale: float = Field(1000.0, ge=0.0, description="sld_guidance_scale")
    warmup_steps: int = Field(10, ge=0, description="sld_warmup_steps: no safety term before this step")
    threshold: float = Field(0.01, description="sld_threshold")
    momentum_scale: float = Field(0.3, ge=0.0, description="sld_momentum_scale")
    mom_beta: float = Field(0.4, ge=0.0, le=1.0, description="sld_mom_beta")
    concept: str | None = Field(None, description="the safety concept text the expert branch steers away from "
                                "(default: the Safe pipeline's; a digits pipeline's e.g. 'a handwritten zero')")


class ImageEvaluationSpec(Strict):
    """Held-out scoring of final latents, and the report page of extreme images."""

    t: int = Field(0, ge=0, description="diffusion step at which final latents are scored")
    batch_size: int = Field(16, gt=1, description="held-out images per batch on the page")
    show: int = Field(3, gt=0, description="highest- and lowest-reward images shown per batch")
    max_batches: int = Field(4, gt=0, description="batches shown on the page")
    blur_fraction: float = Field(0.04, ge=0.0, description="Gaussian blur radius of lowest-reward images, "
                                 "as a fraction of the image width (0: no blur)")
    judge_digit: int | None = Field(None, ge=0, le=9, description="digits pipelines (python -m rrf_ray.data "
                                    "digits-pipeline): the concept digit an independent judge, a classifier fitted "
                                    "on the pipeline's held-out real digits, looks for in every held-out image")


class ImageSweepSpec(Strict):
    """The image experiment: per seed, generation -> shards -> reward (Ray Train) -> evaluation; then the report."""

    name: str = "sd"
    experiment: Literal["image"] = "image"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="one trial per seed: its own chains (initial noises), reward and evaluation")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    safety: SafetySpec = Field(default_factory=SafetySpec)
    reward: LatentRewardSpec = Field(default_factory=LatentRewardSpec)
    evaluation: ImageEvaluationSpec = Field(default_factory=ImageEvaluationSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        """Each seed names a trial directory (trials/seed<N>): a repeated one would be the same trial twice."""
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds
