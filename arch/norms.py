"""Normalisation layers shared by the language model and every mixer.

RMSNorm (Zhang & Sennrich 2019):  y = x / sqrt(mean(x^2) + eps) * w
Gated RMSNorm (Mamba-2, RetNet/fla's fused norm-swish gate), z a gate:
    norm_before_gate=True:  y = RMSNorm(x) * silu(z)
    norm_before_gate=False: y = RMSNorm(x * silu(z))
LayerNorm: torch's, with optional bias.
Statistics are computed in float32 whatever the input dtype.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["RMSNorm", "GatedRMSNorm", "build_norm"]


def _rms_norm(x, weight, eps, z=None, norm_before_gate=True, group_size=None):
    from parazoo.ops import rms_norm

    return rms_norm(x, weight, eps=eps, z=z, norm_before_gate=norm_before_gate, group_size=group_size)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"


class GatedRMSNorm(RMSNorm):
    """RMSNorm with a SiLU gate; ``group_size`` normalises groups of channels separately."""

    def __init__(self, dim: int, eps: float = 1e-5, norm_before_gate: bool = False, group_size: int | None = None,
                 elementwise_affine: bool = True):
        super().__init__(dim, eps, elementwise_affine)
        if group_size is not None and dim % group_size:
            raise ValueError(f"GatedRMSNorm: group_size {group_size} must divide dim {dim}")
        self.norm_before_gate, self.group_size = norm_before_gate, group_size

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return _rms_norm(x, self.weight, self.eps, z=z, norm_before_gate=self.norm_before_gate, group_size=self.group_size)


class LayerNorm(nn.LayerNorm):
    """torch LayerNorm computed in float32 (autocast-safe), output in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def build_norm(kind: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps, bias=bias)
    raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {kind!r}")
