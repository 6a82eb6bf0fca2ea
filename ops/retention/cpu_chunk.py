"""Chunkwise retention in torch: the fast CPU path of chunk_retention and parallel_retention.

Chunkwise form (RetNet, ANCHORS.md), chunk length C, in-chunk index j = 0..C-1, per head
gamma = gamma_h, H_i = the state before chunk i (H_0 = initial_state), L_i = length of chunk i
(C, or less for the last one):

    H_{i+1} = gamma^{L_i} H_i + K_[i]^T (V_[i] * gamma^{L_i-1-j})
    O_[i]   = (Q_[i] K_[i]^T * D) V_[i] + (Q_[i] * gamma^{j+1}) H_i,   D_nm = gamma^{n-m} (n >= m) else 0

with Q already scaled. The parallel form O = (Q K^T * D) V is this with one chunk of length T,
so parallel_retention's CPU path is ``chunk_fwd(..., chunk_size=T)``.

Backward (dO given, dH_N = d final_state or 0), derived from the recurrence
G_t = gamma G_{t+1} + q_t^T do_t (G_t = dLoss/dS_t):

    dH_i   = gamma^{L_i} dH_{i+1} + (Q_[i] * gamma^{j+1})^T dO_[i]          (reverse over chunks)
    dQ_[i] = scale [ (dO_[i] H_i^T) * gamma^{j+1} + (dO_[i] V_[i]^T * D) K_[i] ]
    dK_[i] = (V_[i] dH_{i+1}^T) * gamma^{L_i-1-j} + (dO_[i] V_[i]^T * D)^T Q_[i]
    dV_[i] = (K_[i] dH_{i+1})   * gamma^{L_i-1-j} + (Q_[i] K_[i]^T * D)^T dO_[i]
    d initial_state = dH_0

Only the state recurrence loops (over chunks, carrying (B, H, K, V) in fp32/fp64); everything
else is batched matmuls over all chunks. Powers of gamma are exp(n log gamma) with n >= 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import acc_dtype, log_decay

__all__ = ["chunk_fwd", "chunk_bwd", "parallel_fwd", "parallel_bwd"]


def _to_chunks(x: torch.Tensor, C: int, dt: torch.dtype) -> torch.Tensor:
    """(B, T, H, D) -> (B, H, N, C, D) in dtype dt, zero-padded at the end of time."""
    B, T, H, D = x.shape
    N = -(-T // C)
    x = x.to(dt).transpose(1, 2)                                   # (B, H, T, D)
    x = F.pad(x, (0, 0, 0, N * C - T))
    return x.reshape(B, H, N, C, D)


def _from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    """(B, H, N, C, D) -> (B, T, H, D)."""
    B, H, N, C, D = x.shape
    return x.reshape(B, H, N * C, D)[:, :, :T].transpose(1, 2)


def _decays(H: int, T: int, C: int, device, dt):
    """Decay factors of the chunkwise form, all from exponents >= 0.

    q_dec (1, H, 1, C, 1) = gamma^{j+1}; k_dec (1, H, N, C, 1) = gamma^{L_i-1-j} (0 past L_i);
    chunk_dec (1, H, N, 1, 1) = gamma^{L_i}; D (1, H, 1, C, C) = gamma^{n-m} for n >= m else 0.
    """
    N = -(-T // C)
    lg = log_decay(H, device, dt).view(1, H, 1, 1, 1)
    j = torch.arange(C, device=device, dtype=dt).view(1, 1, 1, C, 1)
    L = (T - C * torch.arange(N, device=device)).clamp(max=C).to(dt).view(1, 1, N, 1, 1)
    q_dec = torch.exp((j + 1) * lg)
    k_exp = L - 1 - j
    k_dec = torch.where(k_exp >= 0, torch.exp(k_exp.clamp(min=0) * lg), torch.zeros((), dtype=dt, device=device))
    chunk_dec = torch.exp(L * lg)
    diff = j - j.transpose(-1, -2)                                   # n - m, (1, 1, 1, C, C)
    D = (diff * lg).masked_fill_(diff < 0, float("-inf")).exp_()     # in place: C x C can be T x T
    return q_dec, k_dec, chunk_dec, D


def _scan_chunks(decay: torch.Tensor, U: torch.Tensor, x0: torch.Tensor | None, reverse: bool):
    """X_{i+1} = decay_i X_i + U_i over chunks (or i = N-1..0 when reverse).

    decay (1, H, N, 1, 1); U (B, H, N, K, V). Returns the value before each step, stacked
    (B, H, N, K, V), and the last value (B, H, K, V). In place on one carried state: no
    per-chunk allocation."""
    N = U.shape[2]
    x = torch.zeros_like(U[:, :, 0]) if x0 is None else x0.to(U.dtype, copy=True)
    before = torch.empty_like(U)
    for i in (range(N - 1, -1, -1) if reverse else range(N)):
        before[:, :, i].copy_(x)
        x.mul_(decay[:, :, i]).add_(U[:, :, i])
    return before, x


def chunk_fwd(q, k, v, h0, scale: float, chunk_size: int, want_ht: bool):
    """q, k (B, T, H, K); v (B, T, H, V); h0 (B, H, K, V) or None.

    Returns o (B, T, H, V) in v's dtype and the final state (B, H, K, V, accumulation dtype) or None."""
    B, T, H, K = q.shape
    dt = acc_dtype(q.dtype)
    C = min(chunk_size, T)
    q_dec, k_dec, chunk_dec, D = _decays(H, T, C, q.device, dt)
    Q = _to_chunks(q, C, dt)                                         # (B, H, N, C, K), unscaled
    Kc = _to_chunks(k, C, dt)                                        # (B, H, N, C, K)
    Vc = _to_chunks(v, C, dt)                                        # (B, H, N, C, V)
    U = Kc.transpose(-1, -2) @ (Vc * k_dec)                          # (B, H, N, K, V)
    Hs, ht = _scan_chunks(chunk_dec, U, h0, reverse=False)           # (B, H, N, K, V)
    o = (Q * (q_dec * scale)) @ Hs                                   # (B, H, N, C, V)
    s = (Q @ Kc.transpose(-1, -2)).mul_(D).mul_(scale)               # (B, H, N, C, C)
    o += s @ Vc
    return _from_chunks(o, T).to(v.dtype), (ht if want_ht else None)


def chunk_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int):
    """Gradients (dq, dk, dv, dh0) of chunk_fwd; dht (B, H, K, V) or None; dh0 None without h0."""
    B, T, H, K = q.shape
    dt = acc_dtype(q.dtype)
    C = min(chunk_size, T)
    q_dec, k_dec, chunk_dec, D = _decays(H, T, C, q.device, dt)
    Q = _to_chunks(q, C, dt) * scale                                 # (B, H, N, C, K)
    Kc = _to_chunks(k, C, dt)
    Vc = _to_chunks(v, C, dt)                                        # (B, H, N, C, V)
    dO = _to_chunks(do, C, dt)                                       # (B, H, N, C, V)
    Hs, _ = _scan_chunks(chunk_dec, Kc.transpose(-1, -2) @ (Vc * k_dec), h0, reverse=False)
    W = (Q * q_dec).transpose(-1, -2) @ dO                           # (B, H, N, K, V)
    dH_next, dh0 = _scan_chunks(chunk_dec, W, dht, reverse=True)     # dH_{i+1} at index i
    dsD = (dO @ Vc.transpose(-1, -2)).mul_(D)                        # (B, H, N, C, C)
    sD = (Q @ Kc.transpose(-1, -2)).mul_(D)                          # (B, H, N, C, C)
    dQ = scale * ((dO @ Hs.transpose(-1, -2)) * q_dec + dsD @ Kc)
    dK = (Vc @ dH_next.transpose(-1, -2)) * k_dec + dsD.transpose(-1, -2) @ Q
    dV = (Kc @ dH_next) * k_dec + sD.transpose(-1, -2) @ dO
    return (_from_chunks(dQ, T).to(q.dtype), _from_chunks(dK, T).to(k.dtype), _from_chunks(dV, T).to(v.dtype),
            None if h0 is None else dh0.to(h0.dtype))


def parallel_fwd(q, k, v, h0, scale: float, chunk_size: int, want_ht: bool):
    """Parallel form O = (Q K^T * D) V: the chunkwise form with a single chunk of length T."""
    return chunk_fwd(q, k, v, h0, scale, q.shape[1], want_ht)


def parallel_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int):
    return chunk_bwd(q, k, v, h0, do, dht, scale, q.shape[1])
