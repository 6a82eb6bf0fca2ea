"""Fast CPU path of the selective scan: the fused C loops of ``cpu_kernel``, or pure torch without a compiler.

The C kernels do everything, pointwise parts included, in one pass over the inputs: the
channel-blocked kernels of ``cpu_block_kernel`` (float32, N <= 256 padded to a multiple of 16, 16
channels of one B/C group per vector; the channels of each group padded to a multiple of 16 when they are
not, see ``channel_plan``) where they apply, else the per-row kernels of ``cpu_kernel``.
Without a compiler the pointwise parts run in torch (``_pointwise``) around the chunked-torch
scan core (``cpu_torch``). Both keep checkpoints ckpt (batch, dim, n_chunks, N) = h just before
each chunk. B, C arrive as (batch, G, N, L); h0 (batch * n_seqs, dim, N) or None holds the state
before each sequence's start, laid out like the last states (``_seqs``). float16/bfloat16 inputs are
computed in float32; float64 stays float64.
"""
from __future__ import annotations

import math

import torch

from .._cpu_jit import ptr
from . import cpu_torch
from ._pointwise import compute_dtype, delta_bwd, delta_fwd, gate_bwd, gate_dz, gate_fwd
from ._seqs import seq_meta
from .cpu_block_kernel import MAX_NS, WIDTH, blk_lib, padded_state
from .cpu_kernel import LIB, chunk_for

__all__ = ["selective_scan_fwd", "selective_scan_bwd", "compute_dtype", "ckpt_chunk"]


def _lib(u: torch.Tensor):
    return LIB.load() if u.device.type == "cpu" else None


def ckpt_chunk(u: torch.Tensor, N: int) -> int:
    """Checkpoint spacing (time steps) for u and state size N."""
    return chunk_for(N) if _lib(u) is not None else cpu_torch.CHUNK


def _c(t, dtype):
    return None if t is None else t.to(dtype).contiguous()


# False: float32 runs the per-row kernels even where the channel-blocked ones apply (``parazoo bench ops``
# times both that way: backend "cpu-rows")
USE_BLOCKED = True


def _blocked(u, A, B, C, dt):
    """The channel-blocked kernels apply: float32, N <= MAX_NS, and every block of WIDTH channels inside one B
    and C group, as they are or with the channels padded (see ``channel_plan``). Returns (library, NS, plan)
    with NS = N padded to a multiple of 16, or None."""
    N = A.shape[1]
    if not (USE_BLOCKED and dt == torch.float32 and 0 < N <= MAX_NS):
        return None
    plan = channel_plan(u.shape[1], B.shape[1], C.shape[1])
    if plan is False:
        return None
    ns = padded_state(N)
    lib = blk_lib(ns).load()
    return None if lib is None else (lib, ns, plan)


# the channel padding may multiply the work by at most this; beyond it the row kernels are as fast (interleaved,
# b1 N16 L2048, 2 threads, forward / fwd+bwd over the row kernels: dim 200 padded to 208 1.65-1.85x / 1.75x,
# dim 1000 to 1008 2.1x / 2.0x, dim 44 to 48 1.13x / 1.18x, dim 24 to 32 1.04-1.13x / 1.06-1.07x, dim 22 to 32
# 0.99x / 0.99x, dim 8 to 16 ~0.9x)
MAX_CHANNEL_PAD = 1.4


def channel_plan(dim: int, GB: int, GC: int):
    """How the channels are padded so that every block of WIDTH channels lies inside one B and one C group.

    The dim channels split into G = lcm(GB, GC) runs of dg = dim / G channels, each run inside one B and
    one C group; each run is zero-padded to dgp channels, dg rounded up to a multiple of WIDTH. Pad
    channels have u = z = 0, A = D = delta_bias = 0 and h0 = 0, so their state stays 0, they add nothing
    to dB and dC, and their outputs are dropped. Returns None when every run is already a multiple of
    WIDTH, (G, dg, dgp) when it is padded, False when the padding would add more than MAX_CHANNEL_PAD
    times the work (the row kernels run then).
    """
    G = math.lcm(GB, GC)
    dg = dim // G
    dgp = -(-dg // WIDTH) * WIDTH
    if dgp == dg:
        return None
    return (G, dg, dgp) if dgp <= MAX_CHANNEL_PAD * dg else False


def _pad_ch(t, plan, ax):
    """t with its channel axis ax padded by ``plan`` (None and an unpadded plan leave t as it is)."""
    if t is None or plan is None:
        return t
    G, dg, dgp = plan
    out = t.new_empty(*t.shape[:ax], G, dgp, *t.shape[ax + 1:])
    out.narrow(ax + 1, 0, dg).copy_(t.unflatten(ax, (G, dg)))
    out.narrow(ax + 1, dg, dgp - dg).zero_()                         # only the pad channels: one pass, not two
    return out.flatten(ax, ax + 1)


def _unpad_ch(t, plan, ax):
    """The inverse of ``_pad_ch``: the real channels of t, contiguous."""
    if t is None or plan is None:
        return t
    G, dg, dgp = plan
    return t.unflatten(ax, (G, dgp)).narrow(ax + 1, 0, dg).flatten(ax, ax + 1).contiguous()


def _pad_n(t, ns):
    """Zero-pad the last (state) dimension of t to ns entries (None stays None); contiguous."""
    if t is None or t.shape[-1] == ns:
        return t
    out = t.new_zeros(*t.shape[:-1], ns)
    out[..., :t.shape[-1]] = t
    return out


def _state_rows(X, dt, ns):
    """B or C (b, G, N, L) -> (b, G, L, ns) in dt, the state entries padded with zeros: the kernels' layout."""
    if ns == X.shape[2]:
        return _c(X.transpose(-1, -2), dt)
    out = X.new_zeros(X.shape[0], X.shape[1], X.shape[3], ns, dtype=dt)
    out[..., :X.shape[2]] = X.transpose(-1, -2)
    return out


def _c_fwd(lib, u, delta, A, B, C, D, z, delta_bias, h0, softplus, start_id, end_id, nseq, need_ckpt, dt):
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    u_, dl_, A_, D_, z_, db_, h0_ = (_c(t, dt) for t in (u, delta, A, D, z, delta_bias, h0))
    K = chunk_for(N)
    nck = -(-L // K)
    blk = _blocked(u, A, B, C, dt)
    if blk is not None:                                                # state padded to ns entries, channels by plan
        blk, ns, plan = blk
        u_, dl_, z_, h0_ = (_pad_ch(t, plan, 1) for t in (u_, dl_, z_, h0_))
        A_, D_, db_ = (_pad_ch(t, plan, 0) for t in (A_, D_, db_))
        dimp = u_.shape[1]                                             # the kernels' channel count
        Bt, Ct = (_state_rows(X, dt, ns) for X in (B, C))             # (b, G, L, ns), alive across the call
        Ap, h0p = _pad_n(A_, ns), _pad_n(h0_, ns)                     # named: alive across the call
        y = torch.empty(batch, dimp, L, dtype=dt)
        last = torch.zeros(batch, nseq, dimp, ns, dtype=dt)
        ckpt = torch.empty(batch, dimp, nck, ns, dtype=dt) if need_ckpt else torch.empty(0, dtype=dt)
        blk.ss_fwd_blk_f32(ptr(u_), ptr(dl_), ptr(Ap), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_),
                           ptr(h0p), ptr(start_id), ptr(end_id), ptr(y), ptr(last),
                           ptr(ckpt) if need_ckpt else None,
                           batch, dimp, L, GB, GC, nseq, K, int(softplus), torch.get_num_threads())
        # the last states and checkpoints keep dim channels and N entries (the op's contract): the backward pads
        # them again
        last = _unpad_ch(last[..., :N], plan, 2).contiguous()
        ckpt = _unpad_ch(ckpt[..., :N], plan, 1).contiguous() if need_ckpt else ckpt
        return _unpad_ch(y, plan, 1), last, ckpt
    y = torch.empty(batch, dim, L, dtype=dt)
    last = torch.zeros(batch, nseq, dim, N, dtype=dt)
    ckpt = torch.empty(batch, dim, nck, N, dtype=dt) if need_ckpt else torch.empty(0, dtype=dt)
    Bt, Ct = (_c(X.transpose(-1, -2), dt) for X in (B, C))            # (b, G, L, N), alive across the call
    getattr(lib, "ss_fwd_f64" if dt == torch.float64 else "ss_fwd_f32")(
        ptr(u_), ptr(dl_), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_), ptr(h0_), ptr(start_id), ptr(end_id),
        ptr(y), ptr(last), ptr(ckpt) if need_ckpt else None,
        batch, dim, L, N, GB, GC, nseq, K, int(softplus), torch.get_num_threads())
    return y, last, ckpt


def _c_bwd(lib, dout, dlast, u, delta, A, B, C, D, z, delta_bias, h0, softplus, start_id, end_id, nseq, ckpt, dt):
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    u_, dl_, A_, D_, z_, db_, h0_ = (_c(t, dt) for t in (u, delta, A, D, z, delta_bias, h0))
    blk = _blocked(u, A, B, C, dt)
    if blk is None:
        ns, plan = N, None
        do_, ck, dlast_ = _c(dout, dt), _c(ckpt, dt), _c(dlast, dt)
    else:                                                              # state padded to ns entries, channels by plan
        blk, ns, plan = blk
        u_, dl_, z_ = (_pad_ch(t, plan, 1) for t in (u_, dl_, z_))
        A_, D_, db_ = (_pad_ch(t, plan, 0) for t in (A_, D_, db_))
        do_ = _pad_ch(dout.to(dt), plan, 1)                            # the blocked kernels read dout strided
        ck = _pad_n(_pad_ch(_c(ckpt, dt), plan, 1), ns)
        dlast_ = _pad_n(_pad_ch(_c(dlast, dt), plan, 1), ns)     # (b * nseq, dim, N)
        h0_ = _pad_n(_pad_ch(h0_, plan, 1), ns)
    dimp = u_.shape[1]
    du, ddelta = torch.empty_like(u_), torch.empty_like(u_)
    dA = torch.empty(batch, dimp, ns, dtype=dt)
    dBt = torch.zeros(batch, GB, L, ns, dtype=dt)                     # (b, G, L, ns)
    dCt = torch.zeros(batch, GC, L, ns, dtype=dt)
    dD = torch.empty(batch, dimp, dtype=dt)
    dz = torch.empty_like(u_) if z is not None else None
    dh0 = torch.zeros(batch * nseq, dimp, ns, dtype=dt) if h0 is not None else None   # 0 for empty sequences
    Bt, Ct = (_state_rows(X, dt, ns) for X in (B, C))                 # (b, G, L, ns)
    ddb = None
    if blk is not None:                                                # d delta_bias summed per row in the kernel
        ddb_rows = torch.empty(batch, dimp, dtype=dt) if delta_bias is not None else None
        Ap = _pad_n(A_, ns)                                             # named: alive across the call
        blk.ss_bwd_blk_f32(ptr(u_), ptr(dl_), ptr(Ap), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_), ptr(h0_),
                           ptr(start_id), ptr(end_id), ptr(ck), ptr(do_, strided=True), ptr(dlast_),
                           ptr(du), ptr(ddelta), ptr(dA), ptr(dBt), ptr(dCt), ptr(dD), ptr(dz), ptr(dh0),
                           ptr(ddb_rows), batch, dimp, L, GB, GC, nseq, chunk_for(N), int(softplus),
                           torch.get_num_threads(), *do_.stride())
        ddb = _unpad_ch(ddb_rows.sum(0), plan, 0) if ddb_rows is not None else None
        du, ddelta, dz, dD = (_unpad_ch(t, plan, 1) for t in (du, ddelta, dz, dD))
        dA, dh0 = (_unpad_ch(t, plan, 1) for t in (dA, dh0))
    else:
        getattr(lib, "ss_bwd_f64" if dt == torch.float64 else "ss_bwd_f32")(
            ptr(u_), ptr(dl_), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_), ptr(h0_), ptr(start_id), ptr(end_id),
            ptr(ck), ptr(do_), ptr(dlast_),
            ptr(du), ptr(ddelta), ptr(dA), ptr(dBt), ptr(dCt), ptr(dD), ptr(dz), ptr(dh0),
            batch, dim, L, N, GB, GC, nseq, chunk_for(N), int(softplus), torch.get_num_threads())
    if ddb is None and delta_bias is not None:
        ddb = ddelta.sum((0, 2))
    return (du, ddelta, dA.sum(0)[:, :N], dBt[..., :N].transpose(-1, -2), dCt[..., :N].transpose(-1, -2),
            dD.sum(0) if D is not None else None, dz, ddb, None if dh0 is None else dh0[..., :N])


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, softplus: bool, cu_seqlens, need_ckpt: bool):
    """-> y (batch, dim, L), last (batch * n_seqs, dim, N), ckpt (batch, dim, n_chunks, N) (empty if not needed)."""
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    batch, dim, L = u.shape
    start_id, end_id, nseq = seq_meta(cu_seqlens, L, u.device)
    lib = _lib(u)
    if lib is not None:
        y, last, ckpt = _c_fwd(lib, u, delta, A, B, C, D, z, delta_bias, h0, softplus, start_id, end_id, nseq,
                               need_ckpt, dt)
    else:
        dl, gate = delta_fwd(delta, delta_bias, softplus, dt), gate_fwd(z, dt)
        y, last, ckpt = cpu_torch.scan_fwd(u, dl, A, B, C, D, gate, h0, start_id, end_id, nseq, need_ckpt, dt)
    return y, last.view(batch * nseq, dim, A.shape[1]), ckpt


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, h0, softplus: bool, cu_seqlens, ckpt):
    """-> du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0 in the compute dtype (None for absent inputs)."""
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    start_id, end_id, nseq = seq_meta(cu_seqlens, u.shape[2], u.device)
    lib = _lib(u)
    if lib is not None:
        return _c_bwd(lib, dout, dlast, u, delta, A, B, C, D, z, delta_bias, h0, softplus, start_id, end_id, nseq,
                      ckpt, dt)
    dl = delta_fwd(delta, delta_bias, softplus, dt)
    dy, sz = gate_bwd(dout, z, dt)
    du, ddl, dA, dB, dC, dD, ypre, dh0 = cpu_torch.scan_bwd(u, dl, A, B, C, D, dy, z is not None, start_id, end_id,
                                                            nseq, ckpt, dlast, h0, dt)
    ddelta, ddelta_bias = delta_bwd(ddl, delta, delta_bias, softplus, dt)
    dz = gate_dz(dout, z, sz, ypre, dt) if z is not None else None
    return du, ddelta, dA, dB, dC, (dD if D is not None else None), dz, ddelta_bias, dh0
