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

(S_i is triton_chunk.py's H_i.) How it runs: one loop over the chunks, every step a handful of
(B*H, C, .) matmuls on head-major (B*H, T, D) views, written into the outputs with ``out=``. At
B = 1 these are strided views of the (B, T, H, D) tensors themselves (no copy in or out); at B > 1
one head-major copy per tensor. No padded copies, no (N, B*H, K, V) stack of chunk states: only
the carried S (B*H, K, V). The decay tables (gamma^{j+1},
gamma^{C-1-j}, scale * D) are built once per (H, C, scale, dtype, device) and shared by every
chunk, batch row and call; the last, shorter chunk takes their leading/trailing slices. The
backward is two passes: forward over the chunks, recomputing S_i (as fla does, rather than keeping
an (N, H, K, V) stack alive from forward to backward), for dQ and the in-chunk parts of dK, dV;
then reverse over the chunks carrying dS for their state parts. At the RetNet mixer's d_model 768
shape (H 3, K 256, V 512, T 8192, one thread) this is 2.5-3x faster forward+backward than the
earlier all-chunks-at-once form, whose batched (N, K, V) state stacks and permuted copies made it
memory-bound; chunk 128 is the fastest tile there (see arch/retnet.py).
"""
from __future__ import annotations

import functools

import torch

from .common import acc_dtype, log_decay

__all__ = ["chunk_fwd", "chunk_bwd", "parallel_fwd", "parallel_bwd"]

_CACHED_MAX_C = 128  # decay tables up to this chunk length are cached (a few MB at most; parallel's T x T are not)


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


@functools.lru_cache(maxsize=16)
def _cached_decays(H: int, C: int, scale: float, device, dt):
    with torch.inference_mode(False):  # ordinary tensors even when first built under inference_mode
        return _build_decays(H, C, scale, device, dt)


def _decays(H: int, C: int, scale: float, device, dt):
    """The decay tables, built once per (H, C, scale, device, dtype) and shared by every chunk and call."""
    if C <= _CACHED_MAX_C:
        return _cached_decays(H, C, float(scale), torch.device(device), dt)
    return _build_decays(H, C, scale, device, dt)


def _chunks(T: int, C: int):
    """(start, end) of each chunk of length C (the last one shorter when C does not divide T)."""
    return [(s, min(s + C, T)) for s in range(0, T, C)]


def _head_major(x: torch.Tensor, dt) -> torch.Tensor:
    """(B, T, H, D) -> (B*H, T, D) in dtype dt: a strided view (no copy) when B = 1, one copy otherwise."""
    B, T, H, D = x.shape
    x = x.to(dt).transpose(1, 2).reshape(B * H, T, D)
    return x if x.stride(-1) == 1 else x.contiguous()


def _head_major_empty(B: int, T: int, H: int, D: int, like: torch.Tensor):
    """An output buffer: (work (B*H, T, D) view to write, result (B, T, H, D) view of the same memory)."""
    if B == 1:
        r = like.new_empty(1, T, H, D)
        return r[0].transpose(0, 1), r
    w = like.new_empty(B, H, T, D)
    return w.view(B * H, T, D), w.transpose(1, 2)


def _times(x: torch.Tensor, t: torch.Tensor, H: int) -> torch.Tensor:
    """x (B*H, L, D) * t (H, L, 1 or L), a new (B*H, L, D) tensor."""
    return (x.unflatten(0, (-1, H)) * t).flatten(0, 1)


def _times_(x: torch.Tensor, t: torch.Tensor, H: int) -> torch.Tensor:
    """x (B*H, ...) *= t (H, ...) in place; returns x."""
    x.unflatten(0, (-1, H)).mul_(t)
    return x


def _state(h0, B: int, H: int, K: int, V: int, like: torch.Tensor) -> torch.Tensor:
    """A fresh (B*H, K, V) state in like's dtype: a copy of h0 (B, H, K, V), or zeros."""
    if h0 is None:
        return like.new_zeros(B * H, K, V)
    return h0.to(like.dtype, copy=True).reshape(B * H, K, V).contiguous()


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
    Q, Kh, Vh = (_head_major(x, dt) for x in (q, k, v))             # (B*H, T, K|K|V)
    O, o = _head_major_empty(B, T, H, V, Q)                          # (B*H, T, V), (B, T, H, V)
    S = _state(h0, B, H, K, V, Q)                                    # (B*H, K, V)
    chunks = _chunks(T, C)
    for i, (s, e) in enumerate(chunks):
        L = e - s
        Qi, Ki, Vi, Oi = Q[:, s:e], Kh[:, s:e], Vh[:, s:e], O[:, s:e]
        A = _times_(torch.bmm(Qi, Ki.transpose(1, 2)), Ds[:, :L, :L], H)  # scale (Q K^T * D)  (B*H, L, L)
        torch.bmm(A, Vi, out=Oi)                                          # (B*H, L, V)
        Oi.baddbmm_(_times(Qi, qs_dec[:, :L], H), S)                      # + (scale Q gamma^{j+1}) S_i
        if i + 1 < len(chunks) or want_ht:
            _times_(S, q_dec[:, L - 1:L], H).baddbmm_(_times(Ki, k_dec[:, C - L:], H).transpose(1, 2), Vi)
    return o.to(v.dtype), (S.view(B, H, K, V) if want_ht else None)


@_no_autocast
def chunk_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int):
    """Gradients (dq, dk, dv, dh0) of chunk_fwd; dht (B, H, K, V) or None; dh0 None without h0."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = acc_dtype(q.dtype)
    C = min(chunk_size, T)
    q_dec, qs_dec, k_dec, Ds = _decays(H, C, scale, q.device, dt)
    Q, Kh, Vh, dO = (_head_major(x, dt) for x in (q, k, v, do))     # (B*H, T, K|K|V|V)
    dQ, dq = _head_major_empty(B, T, H, K, Q)
    dK, dk = _head_major_empty(B, T, H, K, Q)
    dV, dv = _head_major_empty(B, T, H, V, Q)
    chunks = _chunks(T, C)
    # pass 1, forward over chunks: dQ (needs S_i) and the in-chunk parts of dK, dV
    S = _state(h0, B, H, K, V, Q)
    for i, (s, e) in enumerate(chunks):
        L = e - s
        Qi, Ki, Vi, dOi = Q[:, s:e], Kh[:, s:e], Vh[:, s:e], dO[:, s:e]
        dQi, dKi, dVi = dQ[:, s:e], dK[:, s:e], dV[:, s:e]
        Dl = Ds[:, :L, :L]
        dA = _times_(torch.bmm(dOi, Vi.transpose(1, 2)), Dl, H)   # scale (dO V^T * D)  (B*H, L, L)
        A = _times_(torch.bmm(Qi, Ki.transpose(1, 2)), Dl, H)     # scale (Q K^T * D)   (B*H, L, L)
        torch.bmm(dOi, S.transpose(1, 2), out=dQi)
        _times_(dQi, qs_dec[:, :L], H).baddbmm_(dA, Ki)
        torch.bmm(dA.transpose(1, 2), Qi, out=dKi)
        torch.bmm(A.transpose(1, 2), dOi, out=dVi)
        if i + 1 < len(chunks):
            _times_(S, q_dec[:, L - 1:L], H).baddbmm_(_times(Ki, k_dec[:, C - L:], H).transpose(1, 2), Vi)
    # pass 2, reverse over chunks: dS_{i+1} feeds dK, dV of chunk i; then dS_i
    dS = None if dht is None else _state(dht, B, H, K, V, Q)
    for i in range(len(chunks) - 1, -1, -1):
        s, e = chunks[i]
        L = e - s
        Qi, Ki, Vi, dOi = Q[:, s:e], Kh[:, s:e], Vh[:, s:e], dO[:, s:e]
        if dS is not None:
            kd = k_dec[:, C - L:]
            dK[:, s:e].baddbmm_(_times(Vi, kd, H), dS.transpose(1, 2))
            dV[:, s:e].baddbmm_(_times(Ki, kd, H), dS)
        if i > 0 or h0 is not None:
            Qd = _times(Qi, qs_dec[:, :L], H).transpose(1, 2)                # (B*H, K, L)
            dS = torch.bmm(Qd, dOi) if dS is None else _times_(dS, q_dec[:, L - 1:L], H).baddbmm_(Qd, dOi)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
            None if h0 is None else dS.view(B, H, K, V).to(h0.dtype))


def parallel_fwd(q, k, v, h0, scale: float, chunk_size: int, want_ht: bool):
    """Parallel form O = (Q K^T * D) V: the chunkwise form with a single chunk of length T."""
    return chunk_fwd(q, k, v, h0, scale, q.shape[1], want_ht)


def parallel_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int):
    return chunk_bwd(q, k, v, h0, do, dht, scale, q.shape[1])
