"""Fast CPU path of the selective scan: the fused C loops of ``cpu_kernel``, or pure torch without a compiler.

Pointwise work (dl = softplus(delta + bias), the silu(z) gate and their gradients) runs in torch
(``_pointwise``); the scan core runs in C (``cpu_kernel``) or in chunked torch (``cpu_torch``),
both with the same interface and checkpoint format ckpt (batch, dim, n_chunks, N) = h just
before each chunk. B, C arrive as (batch, G, N, L). float16/bfloat16 inputs are computed in
float32; float64 stays float64.
"""
from __future__ import annotations

import torch

from .._cpu_jit import ptr
from . import cpu_torch
from ._pointwise import compute_dtype, delta_bwd, delta_fwd, gate_bwd, gate_dz, gate_fwd
from ._seqs import seq_meta
from .cpu_kernel import CHUNK, LIB

__all__ = ["selective_scan_fwd", "selective_scan_bwd", "compute_dtype", "ckpt_chunk"]


def _lib(u: torch.Tensor):
    return LIB.load() if u.device.type == "cpu" else None


def ckpt_chunk(u: torch.Tensor) -> int:
    return CHUNK if _lib(u) is not None else cpu_torch.CHUNK


def _c(t, dtype):
    return None if t is None else t.to(dtype).contiguous()


def _c_fwd(lib, u, dl, A, B, C, D, gate, reset, end_id, nseq, need_ckpt, dt):
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    u_, A_, D_ = _c(u, dt), _c(A, dt), _c(D, dt)
    Bt, Ct = (_c(X.transpose(-1, -2), dt) for X in (B, C))            # (b, G, L, N)
    y = torch.empty(batch, dim, L, dtype=dt)
    last = torch.zeros(batch, nseq, dim, N, dtype=dt)
    ckpt = torch.empty(batch, dim, -(-L // CHUNK), N, dtype=dt) if need_ckpt else torch.empty(0, dtype=dt)
    getattr(lib, "ss_fwd_f64" if dt == torch.float64 else "ss_fwd_f32")(
        ptr(u_), ptr(dl), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(gate), ptr(reset), ptr(end_id),
        ptr(y), ptr(last), ptr(ckpt) if need_ckpt else None,
        batch, dim, L, N, GB, GC, nseq, CHUNK, torch.get_num_threads())
    return y, last, ckpt


def _c_bwd(lib, u, dl, A, B, C, D, dy, need_ypre, reset, end_id, nseq, ckpt, dlast, dt):
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    u_, A_, D_, ck, dlast_ = _c(u, dt), _c(A, dt), _c(D, dt), _c(ckpt, dt), _c(dlast, dt)
    Bt, Ct = (_c(X.transpose(-1, -2), dt) for X in (B, C))            # (b, G, L, N)
    du, ddl = torch.empty_like(u_), torch.empty_like(u_)
    dA = torch.empty(batch, dim, N, dtype=dt)
    dBt, dCt = torch.zeros_like(Bt), torch.zeros_like(Ct)
    dD = torch.empty(batch, dim, dtype=dt)
    ypre = torch.empty_like(u_) if need_ypre else None
    getattr(lib, "ss_bwd_f64" if dt == torch.float64 else "ss_bwd_f32")(
        ptr(u_), ptr(dl), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(dy), ptr(reset), ptr(end_id), ptr(ck), ptr(dlast_),
        ptr(du), ptr(ddl), ptr(dA), ptr(dBt), ptr(dCt), ptr(dD), ptr(ypre),
        batch, dim, L, N, GB, GC, nseq, CHUNK, torch.get_num_threads())
    return du, ddl, dA.sum(0), dBt.transpose(-1, -2), dCt.transpose(-1, -2), dD.sum(0), ypre


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool, cu_seqlens, need_ckpt: bool):
    """-> y (batch, dim, L), last (batch * n_seqs, dim, N), ckpt (batch, dim, n_chunks, N) (empty if not needed)."""
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, L = u.shape
    reset, end_id, nseq = seq_meta(cu_seqlens, L, u.device)
    dl, gate = delta_fwd(delta, delta_bias, softplus, dt), gate_fwd(z, dt)
    lib = _lib(u)
    core = (lambda *a: _c_fwd(lib, *a)) if lib is not None else cpu_torch.scan_fwd
    y, last, ckpt = core(u, dl, A, B, C, D, gate, reset, end_id, nseq, need_ckpt, dt)
    return y, last.view(batch * nseq, dim, A.shape[1]), ckpt


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, softplus: bool, cu_seqlens, ckpt):
    """-> du, ddelta, dA, dB, dC, dD, dz, ddelta_bias in the compute dtype (None for absent inputs)."""
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    L = u.shape[2]
    reset, end_id, nseq = seq_meta(cu_seqlens, L, u.device)
    dl = delta_fwd(delta, delta_bias, softplus, dt)
    dy, sz = gate_bwd(dout, z, dt)
    lib = _lib(u)
    core = (lambda *a: _c_bwd(lib, *a)) if lib is not None else cpu_torch.scan_bwd
    du, ddl, dA, dB, dC, dD, ypre = core(u, dl, A, B, C, D, dy, z is not None, reset, end_id, nseq, ckpt, dlast, dt)
    ddelta, ddelta_bias = delta_bwd(ddl, delta, delta_bias, softplus, dt)
    dz = gate_dz(dout, z, sz, ypre, dt) if z is not None else None
    return du, ddelta, dA, dB, dC, (dD if D is not None else None), dz, ddelta_bias
