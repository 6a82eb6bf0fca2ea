"""Fast CPU path of the selective scan: the fused C loops of ``cpu_kernel``, or pure torch without a compiler.

The C kernels do everything, pointwise parts included, in one pass over the inputs: the
channel-blocked kernels of ``cpu_block_kernel`` (float32, N = 16, 16 channels of one B/C group per
vector) where they apply, else the per-row kernels of ``cpu_kernel``.
Without a compiler the pointwise parts run in torch (``_pointwise``) around the chunked-torch
scan core (``cpu_torch``). Both keep checkpoints ckpt (batch, dim, n_chunks, N) = h just before
each chunk. B, C arrive as (batch, G, N, L); h0 (batch, dim, N) or None is the state before
t = 0 (then ``seq_meta`` marks no reset at t = 0). float16/bfloat16 inputs are computed in
float32; float64 stays float64.
"""
from __future__ import annotations

import torch

from .._cpu_jit import ptr
from . import cpu_torch
from ._pointwise import compute_dtype, delta_bwd, delta_fwd, gate_bwd, gate_dz, gate_fwd
from ._seqs import seq_meta
from .cpu_block_kernel import BLK_LIB, WIDTH
from .cpu_kernel import CHUNK, LIB

__all__ = ["selective_scan_fwd", "selective_scan_bwd", "compute_dtype", "ckpt_chunk"]


def _lib(u: torch.Tensor):
    return LIB.load() if u.device.type == "cpu" else None


def ckpt_chunk(u: torch.Tensor) -> int:
    return CHUNK if _lib(u) is not None else cpu_torch.CHUNK


def _c(t, dtype):
    return None if t is None else t.to(dtype).contiguous()


def _blocked(u, A, B, C, dt):
    """The channel-blocked kernels apply: float32, N = 16, every block of WIDTH channels inside one B and C group."""
    dim, N = u.shape[1], A.shape[1]
    ok = dt == torch.float32 and N == 16 and all((dim // X.shape[1]) % WIDTH == 0 for X in (B, C))
    return BLK_LIB.load() if ok else None


def _c_fwd(lib, u, delta, A, B, C, D, z, delta_bias, h0, softplus, reset, end_id, nseq, need_ckpt, dt):
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    u_, dl_, A_, D_, z_, db_, h0_ = (_c(t, dt) for t in (u, delta, A, D, z, delta_bias, h0))
    y = torch.empty(batch, dim, L, dtype=dt)
    last = torch.zeros(batch, nseq, dim, N, dtype=dt)
    ckpt = torch.empty(batch, dim, -(-L // CHUNK), N, dtype=dt) if need_ckpt else torch.empty(0, dtype=dt)
    Bt, Ct = (_c(X.transpose(-1, -2), dt) for X in (B, C))            # (b, G, L, N), alive across the call
    blk = _blocked(u, A, B, C, dt)
    if blk is not None:
        blk.ss_fwd_blk_f32(ptr(u_), ptr(dl_), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_),
                           ptr(h0_), ptr(reset), ptr(end_id), ptr(y), ptr(last), ptr(ckpt) if need_ckpt else None,
                           batch, dim, L, GB, GC, nseq, CHUNK, int(softplus), torch.get_num_threads())
        return y, last, ckpt
    getattr(lib, "ss_fwd_f64" if dt == torch.float64 else "ss_fwd_f32")(
        ptr(u_), ptr(dl_), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_), ptr(h0_), ptr(reset), ptr(end_id),
        ptr(y), ptr(last), ptr(ckpt) if need_ckpt else None,
        batch, dim, L, N, GB, GC, nseq, CHUNK, int(softplus), torch.get_num_threads())
    return y, last, ckpt


def _c_bwd(lib, dout, dlast, u, delta, A, B, C, D, z, delta_bias, h0, softplus, reset, end_id, nseq, ckpt, dt):
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    u_, dl_, A_, D_, z_, db_ = (_c(t, dt) for t in (u, delta, A, D, z, delta_bias))
    blk = _blocked(u, A, B, C, dt)
    do_ = dout.to(dt) if blk is not None else _c(dout, dt)            # the blocked kernels read dout strided
    ck, dlast_ = _c(ckpt, dt), _c(dlast, dt)
    du, ddelta = torch.empty_like(u_), torch.empty_like(u_)
    dA = torch.empty(batch, dim, N, dtype=dt)
    dBt = torch.zeros(batch, GB, L, N, dtype=dt)                      # (b, G, L, N)
    dCt = torch.zeros(batch, GC, L, N, dtype=dt)
    dD = torch.empty(batch, dim, dtype=dt)
    dz = torch.empty_like(u_) if z is not None else None
    dh0 = torch.empty(batch, dim, N, dtype=dt) if h0 is not None else None
    Bt, Ct = (_c(X.transpose(-1, -2), dt) for X in (B, C))            # (b, G, L, N)
    ddb = None
    if blk is not None:                                                # d delta_bias summed per row in the kernel
        ddb_rows = torch.empty(batch, dim, dtype=dt) if delta_bias is not None else None
        blk.ss_bwd_blk_f32(ptr(u_), ptr(dl_), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_),
                           ptr(reset), ptr(end_id), ptr(ck), ptr(do_, strided=True), ptr(dlast_),
                           ptr(du), ptr(ddelta), ptr(dA), ptr(dBt), ptr(dCt), ptr(dD), ptr(dz), ptr(dh0), ptr(ddb_rows),
                           batch, dim, L, GB, GC, nseq, CHUNK, int(softplus), torch.get_num_threads(), *do_.stride())
        ddb = ddb_rows.sum(0) if ddb_rows is not None else None
    else:
        getattr(lib, "ss_bwd_f64" if dt == torch.float64 else "ss_bwd_f32")(
            ptr(u_), ptr(dl_), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_), ptr(reset), ptr(end_id),
            ptr(ck), ptr(do_), ptr(dlast_),
            ptr(du), ptr(ddelta), ptr(dA), ptr(dBt), ptr(dCt), ptr(dD), ptr(dz), ptr(dh0),
            batch, dim, L, N, GB, GC, nseq, CHUNK, int(softplus), torch.get_num_threads())
    if ddb is None and delta_bias is not None:
        ddb = ddelta.sum((0, 2))
    return (du, ddelta, dA.sum(0), dBt.transpose(-1, -2), dCt.transpose(-1, -2),
            dD.sum(0) if D is not None else None, dz, ddb, dh0)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, softplus: bool, cu_seqlens, need_ckpt: bool):
    """-> y (batch, dim, L), last (batch * n_seqs, dim, N), ckpt (batch, dim, n_chunks, N) (empty if not needed)."""
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    batch, dim, L = u.shape
    reset, end_id, nseq = seq_meta(cu_seqlens, L, u.device, h0 is not None)
    lib = _lib(u)
    if lib is not None:
        y, last, ckpt = _c_fwd(lib, u, delta, A, B, C, D, z, delta_bias, h0, softplus, reset, end_id, nseq,
                               need_ckpt, dt)
    else:
        dl, gate = delta_fwd(delta, delta_bias, softplus, dt), gate_fwd(z, dt)
        y, last, ckpt = cpu_torch.scan_fwd(u, dl, A, B, C, D, gate, h0, reset, end_id, nseq, need_ckpt, dt)
    return y, last.view(batch * nseq, dim, A.shape[1]), ckpt


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, h0, softplus: bool, cu_seqlens, ckpt):
    """-> du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0 in the compute dtype (None for absent inputs)."""
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    reset, end_id, nseq = seq_meta(cu_seqlens, u.shape[2], u.device, h0 is not None)
    lib = _lib(u)
    if lib is not None:
        return _c_bwd(lib, dout, dlast, u, delta, A, B, C, D, z, delta_bias, h0, softplus, reset, end_id, nseq,
                      ckpt, dt)
    dl = delta_fwd(delta, delta_bias, softplus, dt)
    dy, sz = gate_bwd(dout, z, dt)
    du, ddl, dA, dB, dC, dD, ypre, dh0 = cpu_torch.scan_bwd(u, dl, A, B, C, D, dy, z is not None, reset, end_id,
                                                            nseq, ckpt, dlast, h0 is not None, dt)
    ddelta, ddelta_bias = delta_bwd(ddl, delta, delta_bias, softplus, dt)
    dz = gate_dz(dout, z, sz, ypre, dt) if z is not None else None
    return du, ddelta, dA, dB, dC, (dD if D is not None else None), dz, ddelta_bias, dh0
