"""Launchers of the selective-scan Triton kernels (``triton_fwd`` / ``triton_bwd``), same interface as ``cpu``.

Inputs keep their dtype in memory (float16/bfloat16 are upcast inside the kernels); state,
checkpoints, gradients of B/C (atomic adds) and accumulation are float32, float64 when any input
is float64. B, C arrive as (batch, G, N, L). h0 (batch * n_seqs, dim, N) or None holds each sequence's state
before its start, laid out like the last states (``_seqs``); the backward returns d h0 = a_t g_t at each start.
"""
from __future__ import annotations

import math

import torch
import triton

from .._backend import triton_interpret
from ._pointwise import compute_dtype
from ._seqs import seq_meta
from .triton_bwd import BWD_BLOCK_D, _ss_bwd_kernel
from .triton_fwd import BLOCK_T, FWD_BLOCK_D, NUM_WARPS, _ss_fwd_kernel

__all__ = ["selective_scan_fwd", "selective_scan_bwd", "ckpt_chunk"]


def ckpt_chunk(u: torch.Tensor, N: int) -> int:
    """Time tile = checkpoint spacing: BLOCK_T on GPU; 16 in the CPU interpreter, whose cost grows
    with the padded tile (same kernel code, the AOT specs compile the GPU value)."""
    return 16 if triton_interpret() and not u.is_cuda else BLOCK_T


def _block_d(cap: int, dim: int, GB: int, GC: int) -> int:
    """Largest power of two <= cap dividing the channels per group of B and C (one group per block)."""
    per = math.gcd(dim // GB, dim // GC)
    bd = 1
    while bd * 2 <= cap and per % (bd * 2) == 0:
        bd *= 2
    return bd


def _same_dtype(dt, *ts):
    """Kernels read one storage dtype for all float inputs: u's, or the compute dtype when they differ."""
    dtypes = {t.dtype for t in ts if t is not None}
    target = ts[0].dtype if len(dtypes) == 1 else dt
    return target, [None if t is None else t.to(target).contiguous() for t in ts]


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, softplus: bool, cu_seqlens, need_ckpt: bool):
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    start_id, end_id, nseq = seq_meta(cu_seqlens, L, u.device)
    h0_ = h0.to(dt).contiguous() if h0 is not None else None
    _, (u_, dl_, A_, B_, C_, D_, z_, db_) = _same_dtype(dt, u, delta, A, B, C, D, z, delta_bias)
    bt = ckpt_chunk(u, N)
    n_tiles = triton.cdiv(L, bt)
    y = torch.empty(batch, dim, L, dtype=u_.dtype, device=u.device)
    last = torch.zeros(batch, nseq, dim, N, dtype=dt, device=u.device)
    ckpt = torch.empty(batch, dim, n_tiles, N, dtype=dt, device=u.device) if need_ckpt else torch.empty(0, dtype=dt, device=u.device)
    bd = _block_d(FWD_BLOCK_D, dim, GB, GC)
    if batch * dim * L:
        dummy = u_
        _ss_fwd_kernel[(dim // bd, batch)](
            u_, dl_, A_, B_, C_, D_ if D_ is not None else dummy, z_ if z_ is not None else dummy,
            db_ if db_ is not None else dummy, h0_ if h0_ is not None else last, start_id, end_id, y, last,
            ckpt if need_ckpt else last, dim, L, N, GB, GC, nseq, n_tiles,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
            WRITE_CKPT=bool(need_ckpt), IS_F64=dt == torch.float64, HAS_H0=h0 is not None,
            BLOCK_D=bd, BLOCK_N=triton.next_power_of_2(N), BLOCK_T=bt, num_warps=NUM_WARPS)
    return y, last.view(batch * nseq, dim, N), ckpt


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, h0, softplus: bool, cu_seqlens, ckpt):
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    start_id, end_id, nseq = seq_meta(cu_seqlens, L, u.device)
    h0_ = h0.to(dt).contiguous() if h0 is not None else None
    _, (u_, dl_, A_, B_, C_, D_, z_, db_, do_) = _same_dtype(dt, u, delta, A, B, C, D, z, delta_bias, dout)
    dlast_ = dlast.to(dt).contiguous() if dlast is not None else None
    bt = ckpt_chunk(u, N)
    n_tiles = triton.cdiv(L, bt)
    kw = dict(dtype=dt, device=u.device)
    du, ddelta = torch.empty(batch, dim, L, **kw), torch.empty(batch, dim, L, **kw)
    dz = torch.empty(batch, dim, L, **kw) if z is not None else None
    dA, dD = torch.empty(batch, dim, N, **kw), torch.empty(batch, dim, **kw)
    dB, dC = torch.zeros(B.shape, **kw), torch.zeros(C.shape, **kw)
    dh0 = torch.zeros(batch * nseq, dim, N, **kw) if h0 is not None else None   # 0 for empty sequences
    bd = _block_d(BWD_BLOCK_D, dim, GB, GC)
    if batch * dim * L:
        dummy = u_
        _ss_bwd_kernel[(dim // bd, batch)](
            u_, dl_, A_, B_, C_, D_ if D_ is not None else dummy, z_ if z_ is not None else dummy,
            db_ if db_ is not None else dummy, h0_ if h0_ is not None else dA, start_id, end_id,
            ckpt.to(dt).contiguous(), do_,
            dlast_ if dlast_ is not None else du,
            du, ddelta, dA, dB, dC, dD, dz if dz is not None else du, dh0 if dh0 is not None else dA,
            torch.empty(batch * (dim // bd) * bd * triton.next_power_of_2(N) * bt, **kw),
            dim, L, N, GB, GC, nseq, n_tiles,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None,
            HAS_DLAST=dlast is not None, SOFTPLUS=bool(softplus), IS_F64=dt == torch.float64, HAS_H0=h0 is not None,
            BLOCK_D=bd, BLOCK_N=triton.next_power_of_2(N), BLOCK_T=bt, num_warps=NUM_WARPS)
    else:
        dA.zero_(), dD.zero_(), du.zero_(), ddelta.zero_()
        if dz is not None:
            dz.zero_()
    return (du, ddelta, dA.sum(0), dB, dC, dD.sum(0) if D is not None else None, dz,
            ddelta.sum((0, 2)) if delta_bias is not None else None, dh0)
