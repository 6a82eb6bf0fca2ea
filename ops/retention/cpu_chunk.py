"""Chunkwise retention in torch: the fast CPU path of chunk_retention and parallel_retention.

Chunkwise form (RetNet, ANCHORS.md), chunk length C, in-chunk index j = 0..C-1, per head
gamma = gamma_h, S_i = the state before chunk i (S_0 = initial_state), L_i = length of chunk i
(C, or less for the last one), Q already scaled:

    S_{i+1} = gamma^{L_i} S_i + (K_[i] * gamma^{L_i-1-j})^T V_[i]
    O_[i]   = (Q_[i] K_[i]^T * D) V_[i] + (Q_[i] * gamma^{j+1}) S_i,   D_nm = gamma^{n-m} (n >= m) else 0

The parallel form O = (Q K^T * D) V is this with one chunk of length T, so parallel_retention's CPU
path is ``chunk_fwd(..., chunk_size=T)``.

Backward (dO given, dS_N = d final_state or 0), from the recurrence G_t = gamma G_{t+1} + q_t^T do_t
(G_t = dLoss/dS_t):

    dS_i   = gamma^{L_i} dS_{i+1} + (Q_[i] * gamma^{j+1})^T dO_[i]          (reverse over chunks)
    dQ_[i] = scale [ (dO_[i] S_i^T) * gamma^{j+1} + (dO_[i] V_[i]^T * D) K_[i] ]
    dK_[i] = (V_[i] * gamma^{L_i-1-j}) dS_{i+1}^T + (dO_[i] V_[i]^T * D)^T Q_[i]
    dV_[i] = (K_[i] * gamma^{L_i-1-j}) dS_{i+1}   + (Q_[i] K_[i]^T * D)^T dO_[i]
    d initial_state = dS_0

How it runs (measured at the RetNet mixer's d_model 768 shape, H 3, K 256, V 512, T 8192, one
thread): one loop over the chunks of each batch row, every step a handful of (H, C, .) matmuls on
strided views of the (B, T, H, D) tensors, written straight into the (B, T, H, D) outputs with
``out=`` (no permuted copies of the inputs, no (N, K, V) stack of chunk states: the carried state
S (H, K, V) stays in cache). The decay tables (gamma^{j+1}, gamma^{C-1-j}, D) are built once per
(H, C, dtype, device) and reused by every chunk and batch row; the last, shorter chunk takes their
leading/trailing slices. The backward is two passes: forward over the chunks (recomputing S_i, as
fla does, instead of keeping an (N, H, K, V) stack alive between forward and backward) for dQ and
the in-chunk parts of dK, dV; then reverse over the chunks carrying dS for the state parts.
"""
from __future__ import annotations

import functools

import torch

from .common import acc_dtype, log_decay

__all__ = ["chunk_fwd", "chunk_bwd", "parallel_fwd", "parallel_bwd"]

_CACHED_MAX_C = 1024  # decay tables up to this chunk length are cached (parallel's T x T ones are not)


def _build_decays(H: int, C: int, scale: float, device, dt):
    """q_dec (H, C, 1) = gamma^{j+1}; k_dec (H, C, 1) = gamma^{C-1-j}; the same with the query scale
    folded in: qs_dec = scale q_dec, Ds (H, C, C) = scale gamma^{n-m} for n >= m, else 0.

    For a chunk of length L < C: q_dec[:, :L], k_dec[:, C-L:] (= gamma^{L-1-j}), Ds[:, :L, :L],
    and gamma^L = q_dec[:, L-1]."""
    lg = log_decay(H, device, dt).view(H, 1, 1)
    j = torch.arange(C, device=device, dtype=dt).view(1, C, 1)
    q_dec = torch.exp((j + 1) * lg)
    k_dec = torch.exp((C - 1 - j) * lg)
    diff = j - j.transpose(-1, -2)                                   # n - m, (1, C, C)
    Ds = (diff * lg).masked_fill_(diff < 0, float("-inf")).exp_().mul_(scale)  # in place: C x C can be T x T
    return q_dec, q_dec * scale, k_dec, Ds


_cached_decays = functools.lru_cache(maxsize=16)(_build_decays)


def _decays(H: int, C: int, scale: float, device, dt):
    """The decay tables, built once per (H, C, scale, device, dtype) and shared by every chunk and call."""
    if C <= _CACHED_MAX_C:
        return _cached_decays(H, C, float(scale), torch.device(device), dt)
    return _build_decays(H, C, scale, device, dt)


def _chunks(T: int, C: int):
    """(start, end) of each chunk of length C (the last one shorter when C does not divide T)."""
    return [(s, min(s + C, T)) for s in range(0, T, C)]


def _heads(x: torch.Tensor, b: int, s: int, e: int) -> torch.Tensor:
    """Row b, steps s..e-1 of a (B, T, H, D) tensor as an (H, e - s, D) strided view (no copy)."""
    return x[b, s:e].transpose(0, 1)


def _prepare(dt, *xs):
    """Inputs in the accumulation dtype with a unit last stride (a no-op for float32 contiguous)."""
    out = []
    for x in xs:
        x = x.to(dt)
        out.append(x if x.stride(-1) == 1 else x.contiguous())
    return out


def _no_autocast(fn):
    """Run fn with autocast off: the matmuls compute in the accumulation dtype and write into
    buffers of that dtype (autocast would recast their operands to 16 bits)."""
    @functools.wraps(fn)
    def wrapped(q, *args):
        with torch.autocast(q.device.type, enabled=False):
            return fn(q, *args)
    return wrapped


@_no_autocast
def chunk_fwd(q, k, v, h0, scale: float, chunk_size: int, want_ht: bool):
    """q, k (B, T, H, K); v (B, T, H, V); h0 (B, H, K, V) or None.

    Returns o (B, T, H, V) in v's dtype and the final state (B, H, K, V, accumulation dtype) or None."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = acc_dtype(q.dtype)
    C = min(chunk_size, T)
    q_dec, qs_dec, k_dec, Ds = _decays(H, C, scale, q.device, dt)
    out_dtype = v.dtype
    q, k, v = _prepare(dt, q, k, v)
    o = torch.empty(B, T, H, V, dtype=dt, device=q.device)           # (B, T, H, V)
    ht = torch.empty(B, H, K, V, dtype=dt, device=q.device) if want_ht else None
    chunks = _chunks(T, C)
    for b in range(B):
        S = torch.zeros(H, K, V, dtype=dt, device=q.device) if h0 is None else h0[b].to(dt, copy=True)
        for i, (s, e) in enumerate(chunks):
            L = e - s
            Qi, Ki, Vi, Oi = _heads(q, b, s, e), _heads(k, b, s, e), _heads(v, b, s, e), _heads(o, b, s, e)
            A = torch.bmm(Qi, Ki.transpose(1, 2)).mul_(Ds[:, :L, :L])    # scale (Q K^T * D)  (H, L, L)
            torch.bmm(A, Vi, out=Oi)                                     # (H, L, V)
            Oi.baddbmm_(Qi * qs_dec[:, :L], S)                           # + (scale Q gamma^{j+1}) S_i
            if i + 1 < len(chunks) or want_ht:
                S.mul_(q_dec[:, L - 1:L]).baddbmm_((Ki * k_dec[:, C - L:]).transpose(1, 2), Vi)
        if want_ht:
            ht[b] = S
    return o.to(out_dtype), ht


@_no_autocast
def chunk_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int):
    """Gradients (dq, dk, dv, dh0) of chunk_fwd; dht (B, H, K, V) or None; dh0 None without h0."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    in_dtypes = (q.dtype, k.dtype, v.dtype)
    dt = acc_dtype(q.dtype)
    C = min(chunk_size, T)
    q_dec, qs_dec, k_dec, Ds = _decays(H, C, scale, q.device, dt)
    q, k, v, do = _prepare(dt, q, k, v, do)
    dq = torch.empty(B, T, H, K, dtype=dt, device=q.device)
    dk = torch.empty(B, T, H, K, dtype=dt, device=q.device)
    dv = torch.empty(B, T, H, V, dtype=dt, device=q.device)
    dh0 = None if h0 is None else torch.empty(B, H, K, V, dtype=dt, device=q.device)
    chunks = _chunks(T, C)
    for b in range(B):
        # pass 1, forward over chunks: dQ (needs S_i) and the in-chunk parts of dK, dV
        S = torch.zeros(H, K, V, dtype=dt, device=q.device) if h0 is None else h0[b].to(dt, copy=True)
        for i, (s, e) in enumerate(chunks):
            L = e - s
            Qi, Ki, Vi, dOi = _heads(q, b, s, e), _heads(k, b, s, e), _heads(v, b, s, e), _heads(do, b, s, e)
            dQi, dKi, dVi = _heads(dq, b, s, e), _heads(dk, b, s, e), _heads(dv, b, s, e)
            Dl = Ds[:, :L, :L]
            dA = torch.bmm(dOi, Vi.transpose(1, 2)).mul_(Dl)   # scale (dO V^T * D)  (H, L, L)
            A = torch.bmm(Qi, Ki.transpose(1, 2)).mul_(Dl)     # scale (Q K^T * D)   (H, L, L)
            torch.bmm(dOi, S.transpose(1, 2), out=dQi)
            dQi.mul_(qs_dec[:, :L]).baddbmm_(dA, Ki)
            torch.bmm(dA.transpose(1, 2), Qi, out=dKi)
            torch.bmm(A.transpose(1, 2), dOi, out=dVi)
            if i + 1 < len(chunks):
                S.mul_(q_dec[:, L - 1:L]).baddbmm_((Ki * k_dec[:, C - L:]).transpose(1, 2), Vi)
        # pass 2, reverse over chunks: dS_{i+1} feeds dK, dV of chunk i; then dS_i
        dS = None if dht is None else dht[b].to(dt, copy=True)
        for i in range(len(chunks) - 1, -1, -1):
            s, e = chunks[i]
            L = e - s
            Qi, Ki, Vi, dOi = _heads(q, b, s, e), _heads(k, b, s, e), _heads(v, b, s, e), _heads(do, b, s, e)
            if dS is not None:
                kd = k_dec[:, C - L:]
                _heads(dk, b, s, e).baddbmm_(Vi * kd, dS.transpose(1, 2))
                _heads(dv, b, s, e).baddbmm_(Ki * kd, dS)
            if i > 0 or h0 is not None:
                Qd = (Qi * qs_dec[:, :L]).transpose(1, 2)                       # (H, K, L)
                dS = torch.bmm(Qd, dOi) if dS is None else dS.mul_(q_dec[:, L - 1:L]).baddbmm_(Qd, dOi)
        if h0 is not None:
            dh0[b] = dS
    return (dq.to(in_dtypes[0]), dk.to(in_dtypes[1]), dv.to(in_dtypes[2]),
            None if h0 is None else dh0.to(h0.dtype))


def parallel_fwd(q, k, v, h0, scale: float, chunk_size: int, want_ht: bool):
    """Parallel form O = (Q K^T * D) V: the chunkwise form with a single chunk of length T."""
    return chunk_fwd(q, k, v, h0, scale, q.shape[1], want_ht)


def parallel_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int):
    return chunk_bwd(q, k, v, h0, do, dht, scale, q.shape[1])
