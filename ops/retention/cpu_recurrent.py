"""Recurrent retention in torch: the CPU path of fused_recurrent_retention.

Per head, gamma = gamma_h:

    S_t = gamma S_{t-1} + k_t^T v_t,   o_t = (scale q_t) S_t                         (forward)
    G_t = gamma G_{t+1} + scale q_t^T do_t,  G_T := d final_state                   (reverse)
    dq_t = scale do_t S_t^T,  dk_t = v_t G_t^T,  dv_t = k_t G_t,  d initial_state = gamma G_0

A loop over time carrying the (B, H, K, V) state in fp32/fp64; the backward recomputes S_t in a
forward pass (for dq) and runs the real reverse scan G_t (for dk, dv), so nothing of size
T x K x V is stored. On CPU tensors the loops run as fused C (cpu_recurrent_c.py, compiled on
first use); the torch loops below are the fallback where no C compiler exists, and the path for
CUDA tensors.
"""
from __future__ import annotations

import torch

from .._cpu_jit import ptr
from .common import acc_dtype, log_decay
from .cpu_recurrent_c import KERNEL

__all__ = ["recurrent_fwd", "recurrent_bwd"]


def _c_lib(q):
    """The compiled C loops for CPU tensors, else None (torch loops)."""
    return KERNEL.load() if q.device.type == "cpu" else None


def _c_args(dt, *tensors):
    """Contiguous copies in the accumulation dtype (None stays None) and their pointers."""
    ts = [None if t is None else t.to(dt).contiguous() for t in tensors]
    return ts, [ptr(t) for t in ts]


def _c_fwd(lib, q, k, v, h0, scale, want_ht):
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = acc_dtype(q.dtype)
    _, ptrs = _c_args(dt, q, k, v, h0)
    gam = log_decay(H, dtype=dt).exp().contiguous()
    o = torch.empty(B, T, H, V, dtype=dt)
    ht = torch.empty(B, H, K, V, dtype=dt) if want_ht else None
    fn = lib.ret_fwd_f64 if dt == torch.float64 else lib.ret_fwd_f32
    fn(*ptrs, ptr(o), ptr(ht), ptr(gam), B, T, H, K, V, scale)
    return o.to(v.dtype), ht


def _c_bwd(lib, q, k, v, h0, do, dht, scale):
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = acc_dtype(q.dtype)
    _, ptrs = _c_args(dt, q, k, v, h0, do, dht)
    gam = log_decay(H, dtype=dt).exp().contiguous()
    dq, dk = torch.empty(B, T, H, K, dtype=dt), torch.empty(B, T, H, K, dtype=dt)
    dv = torch.empty(B, T, H, V, dtype=dt)
    dh0 = None if h0 is None else torch.empty(B, H, K, V, dtype=dt)
    fn = lib.ret_bwd_f64 if dt == torch.float64 else lib.ret_bwd_f32
    fn(*ptrs, ptr(dq), ptr(dk), ptr(dv), ptr(dh0), ptr(gam), B, T, H, K, V, scale)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), (None if h0 is None else dh0.to(h0.dtype))


def _prep(q, k, v, dt):
    """(B, T, H, D) inputs -> (T, B, H, D) in dtype dt, so that x[t] is contiguous."""
    return [x.to(dt).transpose(0, 1).contiguous() for x in (q, k, v)]


def recurrent_fwd(q, k, v, h0, scale: float, chunk_size: int, want_ht: bool, use_c: bool = True):
    lib = _c_lib(q) if use_c else None
    if lib is not None:
        return _c_fwd(lib, q, k, v, h0, scale, want_ht)
    B, T, H, K = q.shape
    dt = acc_dtype(q.dtype)
    g = log_decay(H, q.device, dt).exp().view(1, H, 1, 1)
    Q, Kt, Vt = _prep(q, k, v, dt)                                    # (T, B, H, *)
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=dt) if h0 is None else h0.to(dt).clone()
    o = torch.empty(T, B, H, v.shape[-1], dtype=dt, device=q.device)  # (T, B, H, V)
    for t in range(T):
        S.mul_(g).add_(Kt[t].unsqueeze(-1) * Vt[t].unsqueeze(-2))
        torch.matmul(Q[t].unsqueeze(-2), S, out=o[t].unsqueeze(-2))
    o.mul_(scale)
    return o.transpose(0, 1).to(v.dtype), (S if want_ht else None)


def recurrent_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int, use_c: bool = True):
    lib = _c_lib(q) if use_c else None
    if lib is not None:
        return _c_bwd(lib, q, k, v, h0, do, dht, scale)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = acc_dtype(q.dtype)
    g = log_decay(H, q.device, dt).exp().view(1, H, 1, 1)
    Q, Kt, Vt = _prep(q, k, v, dt)
    dO = do.to(dt).transpose(0, 1).contiguous()                        # (T, B, H, V)
    dq = torch.empty(T, B, H, K, dtype=dt, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty(T, B, H, V, dtype=dt, device=q.device)
    S = q.new_zeros(B, H, K, V, dtype=dt) if h0 is None else h0.to(dt).clone()
    for t in range(T):                                                 # S_t again, for dq
        S.mul_(g).add_(Kt[t].unsqueeze(-1) * Vt[t].unsqueeze(-2))
        torch.matmul(S, dO[t].unsqueeze(-1), out=dq[t].unsqueeze(-1))
    G = q.new_zeros(B, H, K, V, dtype=dt) if dht is None else dht.to(dt).clone()
    for t in range(T - 1, -1, -1):                                     # reverse scan G_t
        G.add_(scale * Q[t].unsqueeze(-1) * dO[t].unsqueeze(-2))
        torch.matmul(G, Vt[t].unsqueeze(-1), out=dk[t].unsqueeze(-1))
        torch.matmul(Kt[t].unsqueeze(-2), G, out=dv[t].unsqueeze(-2))
        G.mul_(g)
    dq.mul_(scale)
    return (dq.transpose(0, 1).to(q.dtype), dk.transpose(0, 1).to(k.dtype), dv.transpose(0, 1).to(v.dtype),
            None if h0 is None else G.to(h0.dtype))
