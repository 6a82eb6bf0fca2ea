"""Pointwise pieces around the scan core, in torch: used by the pure-torch path (the C kernels and
the Triton kernels fuse the same formulas).

    dl = softplus(delta + delta_bias) or delta + delta_bias;   d dl / d delta = sigmoid(delta + bias) or 1
    gate = silu(z) = z sigmoid(z);                              silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))
    y = ypre * gate  =>  dy_pre = dout * gate,  dz = dout * ypre * silu'(z)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["compute_dtype", "delta_fwd", "delta_bwd", "gate_fwd", "gate_bwd"]


def compute_dtype(*tensors) -> torch.dtype:
    """float64 when any input is float64, else float32 (state and accumulation dtype)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _raw(delta, delta_bias, dt):
    raw = delta.to(dt)
    return raw + delta_bias.to(dt)[:, None] if delta_bias is not None else raw


def delta_fwd(delta, delta_bias, softplus: bool, dt) -> torch.Tensor:
    """dl (batch, dim, L) in dt, contiguous."""
    raw = _raw(delta, delta_bias, dt)
    return (F.softplus(raw) if softplus else raw).contiguous()


def delta_bwd(ddl, delta, delta_bias, softplus: bool, dt):
    """-> (ddelta (batch, dim, L), ddelta_bias (dim,) or None) from the gradient of dl."""
    ddelta = ddl * torch.sigmoid(_raw(delta, delta_bias, dt)) if softplus else ddl
    return ddelta, (ddelta.sum((0, 2)) if delta_bias is not None else None)


def gate_fwd(z, dt):
    return None if z is None else F.silu(z.to(dt)).contiguous()


def gate_bwd(dout, z, dt):
    """-> (dy_pre, sz) where sz = sigmoid(z) (None without a gate)."""
    dout = dout.to(dt)
    if z is None:
        return dout.contiguous(), None
    zz = z.to(dt)
    sz = torch.sigmoid(zz)
    return (dout * zz * sz).contiguous(), sz


def gate_dz(dout, z, sz, ypre, dt):
    zz = z.to(dt)
    return dout.to(dt) * ypre * sz * (1 + zz * (1 - sz))
