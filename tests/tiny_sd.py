"""A tiny, randomly initialised Stable Diffusion pipeline saved to disk: nothing is downloaded.

The tokenizer is a CLIP BPE tokenizer over single bytes (no merges) built from a vocab
written here (rrf_ray.image.digits.byte_tokenizer), so prompts tokenise without any hub file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rrf_ray.image.digits import byte_tokenizer


def save_tiny_pipeline(path: Path, latent_size: int = 8, seed: int = 0) -> Path:
    """A random SD pipeline (UNet 8/16 channels, 2-level VAE, 2-layer CLIP text encoder) at `path`."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    path = Path(path)
    tokenizer = byte_tokenizer(path.parent / f".{path.name}-tokenizer-src", max_length=16)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=2 * latent_size)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path
