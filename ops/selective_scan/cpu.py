"""Fast CPU path of the selective scan: the fused C loops of ``cpu_kernel``, or pure torch without a compiler.

Both take the canonical arguments prepared by ``__init__`` (B, C as (batch, G, N, L)) and share
the checkpoint format ckpt (batch, dim, n_chunks, N) = h just before each chunk of ``CHUNK`` steps.
float16/bfloat16 inputs are computed in float32; float64 stays float64.
"""
from __future__ import annotations

import torch

from .._cpu_jit import ptr
from . import cpu_torch
from ._seqs import seq_meta
from .cpu_kernel import CHUNK, LIB

__all__ = ["selective_scan_fwd", "selective_scan_bwd", "compute_dtype", "ckpt_chunk"]


def compute_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _use_c(u: torch.Tensor):
    return LIB.load() if u.device.type == "cpu" else None


def ckpt_chunk(u: torch.Tensor) -> int:
    return CHUNK if _use_c(u) is not None else cpu_torch.CHUNK


def _c(t, dtype):
    return None if t is None else t.to(dtype).contiguous()


def _sfx(dtype):
    return "f64" if dtype == torch.float64 else "f32"


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool, cu_seqlens, need_ckpt: bool):
    """-> y (batch, dim, L), last (batch * n_seqs, dim, N), ckpt (batch, dim, n_chunks, N) (empty if not needed)."""
    lib = _use_c(u)
    if lib is None:
        return cpu_torch.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, cu_seqlens, need_ckpt)
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    reset, end_id, nseq = seq_meta(cu_seqlens, L, u.device)
    nck = -(-L // CHUNK)
    u_, dl_, A_, D_, z_, db_ = (_c(t, dt) for t in (u, delta, A, D, z, delta_bias))
    Bt, Ct = (_c(X.transpose(-1, -2), dt) for X in (B, C))            # (b, G, L, N)
    y = torch.empty(batch, dim, L, dtype=dt)
    last = torch.zeros(batch, nseq, dim, N, dtype=dt)
    ckpt = torch.empty(batch, dim, nck, N, dtype=dt) if need_ckpt else torch.empty(0, dtype=dt)
    getattr(lib, f"ss_fwd_{_sfx(dt)}")(
        ptr(u_), ptr(dl_), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_), ptr(reset), ptr(end_id),
        ptr(y), ptr(last), ptr(ckpt) if need_ckpt else None,
        batch, dim, L, N, GB, GC, nseq, CHUNK, int(softplus), torch.get_num_threads())
    return y, last.view(batch * nseq, dim, N), ckpt


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, softplus: bool, cu_seqlens, ckpt):
    """-> du, ddelta, dA, dB, dC, dD, dz, ddelta_bias in the compute dtype (None for absent inputs)."""
    lib = _use_c(u)
    if lib is None:
        return cpu_torch.selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, softplus, cu_seqlens, ckpt)
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    reset, end_id, nseq = seq_meta(cu_seqlens, L, u.device)
    u_, dl_, A_, D_, z_, db_, do_ = (_c(t, dt) for t in (u, delta, A, D, z, delta_bias, dout))
    dlast_ = _c(dlast, dt)
    ckpt_ = _c(ckpt, dt)
    Bt, Ct = (_c(X.transpose(-1, -2), dt) for X in (B, C))            # (b, G, L, N)
    du, ddelta = torch.empty_like(u_), torch.empty_like(u_)
    dA = torch.empty(batch, dim, N, dtype=dt)
    dBt, dCt = torch.zeros_like(Bt), torch.zeros_like(Ct)
    dD = torch.empty(batch, dim, dtype=dt)
    dz = torch.empty_like(u_) if z is not None else None
    getattr(lib, f"ss_bwd_{_sfx(dt)}")(
        ptr(u_), ptr(dl_), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_), ptr(reset), ptr(end_id),
        ptr(ckpt_), ptr(do_), ptr(dlast_),
        ptr(du), ptr(ddelta), ptr(dA), ptr(dBt), ptr(dCt), ptr(dD), ptr(dz),
        batch, dim, L, N, GB, GC, nseq, CHUNK, int(softplus), torch.get_num_threads())
    return (du, ddelta, dA.sum(0), dBt.transpose(-1, -2), dCt.transpose(-1, -2),
            dD.sum(0) if D is not None else None, dz,
            ddelta.sum((0, 2)) if delta_bias is not None else None)
