"""Shared pieces of the retention ops: the fixed per-head decay and the accumulation dtype.

RetNet (Sun et al. 2023) gives head h = 0..H-1 the decay

    gamma_h = 1 - 2^(-5-h)

fixed, not learned (as fla). Every path works with log(gamma_h) = log1p(-2^(-5-h)), computed in
float64 and cast once, so that powers gamma^n = exp(n * log gamma) with n >= 0 are formed without
overflow and without the cancellation of 1 - small.
"""
from __future__ import annotations

import torch

__all__ = ["acc_dtype", "log_decay", "default_scale"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and accumulation dtype: float32, or float64 when the inputs are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def log_decay(n_heads: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log(gamma_h) for h = 0..H-1, shape (H,)."""
    h = torch.arange(n_heads, dtype=torch.float64, device=device)
    return torch.log1p(-torch.exp2(-5.0 - h)).to(dtype)


def default_scale(head_dim_k: int, scale: float | None) -> float:
    """The query scale: K^-1/2 unless given."""
    return float(head_dim_k) ** -0.5 if scale is None else float(scale)
