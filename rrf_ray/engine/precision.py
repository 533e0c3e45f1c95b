"""Numeric precision on an accelerator, in one place: what training, sampling and the rate benchmark use.

fp32 everywhere; on CUDA, matmuls and convolutions may use TF32 (fp32 range, 10-bit mantissa
products, fp32 accumulation): on Ampere and newer GPUs several times faster, and well inside the
noise of stochastic diffusion training (tests/diffusion/test_cuda.py compares a CUDA run with a
CPU run). bf16 autocast is not used: the reward alignment matches a gradient to the small
difference of two samples, and Algorithm 4 differentiates through a chain of guided steps.
"""

from __future__ import annotations

import torch


def configure_precision(device: torch.device | str) -> str:
    """Set torch's precision flags for `device` (process-wide) and say what they are."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return "fp32 (TF32 matmuls and convolutions)"
    return "fp32"
