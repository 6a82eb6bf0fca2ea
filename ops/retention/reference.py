"""Retention, the plain sequential definition (RetNet, Sun et al. 2023, recurrent form).

Per batch b and head h with decay gamma = gamma_h = 1 - 2^(-5-h):

    S_t = gamma S_{t-1} + k_t^T v_t          S_{-1} = initial_state (or 0); S_t: (K, V)
    o_t = (scale q_t) S_t                    q_t, k_t: (K,); v_t, o_t: (V,)

This loop over time is slow and obviously right; it is the ground truth of the tests (run it in
float64) and it is differentiable by autograd. The parallel and chunkwise forms compute the same.
"""
from __future__ import annotations

import torch

from .common import acc_dtype, default_scale, log_decay

__all__ = ["retention_reference"]


def retention_reference(q, k, v, scale=None, initial_state=None, output_final_state=False):
    """q, k: (B, T, H, K); v: (B, T, H, V); initial_state: (B, H, K, V) or None.

    Returns o (B, T, H, V) in v's dtype and the final state (B, H, K, V) in the accumulation dtype
    (float32, float64 for float64 inputs), or None.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = acc_dtype(q.dtype)
    scale = default_scale(K, scale)
    gamma = log_decay(H, q.device, dt).exp().view(1, H, 1, 1)  # (1, H, 1, 1)
    qs, ks, vs = (x.to(dt) for x in (q, k, v))
    S = q.new_zeros(B, H, K, V, dtype=dt) if initial_state is None else initial_state.to(dt)
    outs = []
    for t in range(T):
        S = gamma * S + ks[:, t, :, :, None] * vs[:, t, :, None, :]      # (B, H, K, V)
        outs.append(torch.einsum("bhk,bhkv->bhv", scale * qs[:, t], S))   # (B, H, V)
    o = torch.stack(outs, dim=1) if T else v.new_zeros(B, 0, H, V, dtype=dt)  # (B, T, H, V)
    return o.to(v.dtype), (S if output_final_state else None)
