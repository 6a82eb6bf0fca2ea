"""RMSNorm, optionally grouped and gated: the plain definition, the ground truth in tests.

Zhang & Sennrich (2019) RMSNorm over the last dimension, split into groups of ``group_size``
channels (Mamba-2's ``ngroups``; default one group of D channels):

    rmsnorm(u)_i = u_i / sqrt(mean_{j in group(i)} u_j^2 + eps)

with an optional gate z (silu(z) = z * sigmoid(z)):

    z None:                      y = rmsnorm(x) * weight
    norm_before_gate = True:     y = rmsnorm(x) * weight * silu(z)     (RetNet / fla fused norm-swish-gate)
    norm_before_gate = False:    y = rmsnorm(x * silu(z)) * weight     (Mamba-2 gated RMSNorm)

weight None means no affine scale. Statistics are computed in float32 (float64 for float64
input); the output has x's dtype. Shapes: x, z (..., D); weight (D,).
"""
from __future__ import annotations

import torch


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6,
                       z: torch.Tensor | None = None, norm_before_gate: bool = True,
                       group_size: int | None = None) -> torch.Tensor:
    D = x.shape[-1]
    n = D if group_size is None else group_size
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    u = x.to(ct)                                                   # (..., D)
    gate = None
    if z is not None:
        zc = z.to(ct)
        gate = zc * torch.sigmoid(zc)                              # silu(z), (..., D)
        if not norm_before_gate:
            u = u * gate
    ug = u.reshape(*u.shape[:-1], D // n, n)                       # (..., G, N)
    y = (ug / torch.sqrt(ug.pow(2).mean(dim=-1, keepdim=True) + eps)).reshape(u.shape)
    if weight is not None:
        y = y * weight.to(ct)
    if gate is not None and norm_before_gate:
        y = y * gate
    return y.to(x.dtype)
