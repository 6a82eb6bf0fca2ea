"""Mamba-2 SSD (Dao & Gu 2024): the plain sequential recurrence, the ground truth for tests.

Per batch b and head h (head h reads group g = h // (H // G) of B and C):

    dt'_t = softplus(dt_t + dt_bias)  if dt_softplus  else  dt_t + dt_bias
    h_t   = exp(dt'_t A) h_{t-1} + dt'_t x_t B_t^T           h: (P, N), h_{-1} = initial state (or 0)
    y_t   = h_t C_t + D x_t                                  y_t: (P,)
    y_t   = y_t * silu(z_t)                                  when z is given (mamba_chunk_scan_combined)

With ``cu_seqlens`` (batch 1, flash-attn convention) the state restarts at every boundary and
each packed sequence runs the same recurrence on its own slice.

Slow (a Python loop over time) and obviously right; runs in the inputs' dtype (float64-capable).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ssd_scan_reference", "dt_preprocess"]


def dt_preprocess(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool) -> torch.Tensor:
    """dt' = softplus(dt + dt_bias) or dt + dt_bias; dt: (B, T, H), dt_bias: (H,)."""
    if dt_bias is not None:
        dt = dt + dt_bias
    return F.softplus(dt) if dt_softplus else dt


def _scan_one(x, dt, A, B, C, D, h0):
    # x: (b, T, H, P); dt: (b, T, H) already preprocessed; B, C: (b, T, H, N) (groups expanded)
    b, T, H, P = x.shape
    N = B.shape[-1]
    h = x.new_zeros(b, H, P, N) if h0 is None else h0
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)                                            # (b, H)
        h = decay[..., None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        y = (h * C[:, t, :, None, :]).sum(-1)                                       # (b, H, P)
        ys.append(y)
    y = torch.stack(ys, 1) if ys else x.new_zeros(b, 0, H, P)                       # (b, T, H, P)
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D) * x
    return y, h


def ssd_scan_reference(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                       initial_states=None, return_final_states=False, cu_seqlens=None):
    """Sequential SSD. Shapes as ``parazoo.ops.ssd_scan``; with cu_seqlens, initial_states and
    final states are per sequence (n_seqs, H, P, N)."""
    H, G = x.shape[2], B.shape[2]
    rep = H // G
    Bh = B.repeat_interleave(rep, dim=2)                                            # (b, T, H, N)
    Ch = C.repeat_interleave(rep, dim=2)
    dtp = dt_preprocess(dt, dt_bias, dt_softplus)
    if cu_seqlens is None:
        y, h = _scan_one(x, dtp, A, Bh, Ch, D, initial_states)
        finals = h
    else:
        bounds = cu_seqlens.tolist()
        ys, hs = [], []
        for s in range(len(bounds) - 1):
            lo, hi = bounds[s], bounds[s + 1]
            h0 = None if initial_states is None else initial_states[s:s + 1]
            y_s, h_s = _scan_one(x[:, lo:hi], dtp[:, lo:hi], A, Bh[:, lo:hi], Ch[:, lo:hi], D, h0)
            ys.append(y_s)
            hs.append(h_s)
        y = torch.cat(ys, 1)
        finals = torch.cat(hs, 0)
    if z is not None:
        y = y * F.silu(z)
    return (y, finals) if return_final_states else y
