"""Sequential reference for the diagonal (element-wise) linear recurrence.

    forward  (reverse=False):  h_t = a_t * h_{t-1} + b_t,   t = 0 .. T-1,   h_{-1} = h0 (zeros if None)
    backward (reverse=True):   h_t = a_t * h_{t+1} + b_t,   t = T-1 .. 0,   h_{T}  = h0

a, b: (B, T, *); h0: (B, *); returns h: (B, T, *). The state is carried in float64 when any input is
float64, else float32; the result has dtype promote(a, b). Slow and obviously right: the ground truth
for the tests. Differentiable by autograd through the loop (that is fine for a reference).
"""
from __future__ import annotations

import torch

__all__ = ["linear_scan_ref", "state_dtype"]


def state_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any given tensor is float64, else float32 (state is never below fp32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def linear_scan_ref(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                    reverse: bool = False) -> torch.Tensor:
    sd = state_dtype(a, b, h0)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    T = a.shape[1]
    h = torch.zeros(a.shape[:1] + a.shape[2:], dtype=sd, device=a.device) if h0 is None else h0.to(sd)  # (B, *)
    a_t, b_t = a.to(sd).unbind(1), b.to(sd).unbind(1)  # unbind: one backward op, not T scatters
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h = a_t[t] * h + b_t[t]
        outs[t] = h
    if T == 0:
        return torch.empty(b.shape, dtype=out_dtype, device=b.device)
    return torch.stack(outs, 1).to(out_dtype)  # (B, T, *)
