"""Sequential reference for the block-diagonal linear recurrence (K x K blocks per channel).

    forward  (reverse=False):  h_t = A_t @ h_{t-1} + b_t,   t = 0 .. T-1,   h_{-1} = h0 (zeros if None)
    backward (reverse=True):   h_t = A_t @ h_{t+1} + b_t,   t = T-1 .. 0,   h_{T}  = h0

A: (B, T, *, K, K); b: (B, T, *, K); h0: (B, *, K); returns h: (B, T, *, K). This is the linear
system of one Newton step of ParaRNN (A_t = df/dh_{t-1}, 2x2 blocks for ParaLSTM's [c, h]).
State in float64 when any input is float64, else float32; result dtype promote(A, b).
"""
from __future__ import annotations

import torch

from ..linear_scan.reference import state_dtype

__all__ = ["block_scan_ref"]


def block_scan_ref(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                   reverse: bool = False) -> torch.Tensor:
    sd = state_dtype(A, b, h0)
    out_dtype = torch.promote_types(A.dtype, b.dtype)
    T = b.shape[1]
    h = torch.zeros(b.shape[:1] + b.shape[2:], dtype=sd, device=b.device) if h0 is None else h0.to(sd)  # (B, *, K)
    A_t, b_t = A.to(sd).unbind(1), b.to(sd).unbind(1)  # unbind: one backward op, not T scatters
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h = (A_t[t] @ h.unsqueeze(-1)).squeeze(-1) + b_t[t]
        outs[t] = h
    if T == 0:
        return torch.empty(b.shape, dtype=out_dtype, device=b.device)
    return torch.stack(outs, 1).to(out_dtype)  # (B, T, *, K)
