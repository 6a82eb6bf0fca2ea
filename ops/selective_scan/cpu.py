"""Fast CPU path of the selective scan: the fused C loops of ``cpu_kernel``, or pure torch without a compiler.

The C kernels do everything, pointwise parts included, in one pass over the inputs: the
channel-blocked kernels of ``cpu_block_kernel`` (float32, N <= 256 padded to a multiple of 16, 16
channels of one B/C group per vector) where they apply, else the per-row kernels of ``cpu_kernel``.
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
from .cpu_block_kernel import MAX_NS, WIDTH, blk_lib, padded_state
from .cpu_kernel import CHUNK, LIB

__all__ = ["selective_scan_fwd", "selective_scan_bwd", "compute_dtype", "ckpt_chunk"]


def _lib(u: torch.Tensor):
    return LIB.load() if u.device.type == "cpu" else None


def ckpt_chunk(u: torch.Tensor) -> int:
    return CHUNK if _lib(u) is not None else cpu_torch.CHUNK


def _c(t, dtype):
    return None if t is None else t.to(dtype).contiguous()


# False: float32 runs the per-row kernels even where the channel-blocked ones apply (``parazoo bench ops``
# times both that way: backend "cpu-rows")
USE_BLOCKED = True


def _blocked(u, A, B, C, dt):
    """The channel-blocked kernels apply: float32, N <= MAX_NS, every block of WIDTH channels inside one B and C
    group. Returns (library, NS) with NS = N padded to a multiple of 16, or None."""
    dim, N = u.shape[1], A.shape[1]
    ok = USE_BLOCKED and dt == torch.float32 and 0 < N <= MAX_NS and all((dim // X.shape[1]) % WIDTH == 0 for X in (B, C))
    if not ok:
        return None
    ns = padded_state(N)
    lib = blk_lib(ns).load()
    return None if lib is None else (lib, ns)


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


def _c_fwd(lib, u, delta, A, B, C, D, z, delta_bias, h0, softplus, reset, end_id, nseq, need_ckpt, dt):
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    u_, dl_, A_, D_, z_, db_, h0_ = (_c(t, dt) for t in (u, delta, A, D, z, delta_bias, h0))
    y = torch.empty(batch, dim, L, dtype=dt)
    last = torch.zeros(batch, nseq, dim, N, dtype=dt)
    ckpt = torch.empty(batch, dim, -(-L // CHUNK), N, dtype=dt) if need_ckpt else torch.empty(0, dtype=dt)
    blk = _blocked(u, A, B, C, dt)
    if blk is not None:                                                # state padded to ns entries
        blk, ns = blk
        Bt, Ct = (_state_rows(X, dt, ns) for X in (B, C))             # (b, G, L, ns), alive across the call
        Ap, h0p, last_ = _pad_n(A_, ns), _pad_n(h0_, ns), _pad_n(last, ns)   # named: alive across the call
        ckpt_ = _pad_n(ckpt, ns) if need_ckpt else ckpt
        blk.ss_fwd_blk_f32(ptr(u_), ptr(dl_), ptr(Ap), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_),
                           ptr(h0p), ptr(reset), ptr(end_id), ptr(y), ptr(last_),
                           ptr(ckpt_) if need_ckpt else None,
                           batch, dim, L, GB, GC, nseq, CHUNK, int(softplus), torch.get_num_threads())
        # the checkpoints keep N entries (the op's contract): the backward pads them again
        return y, last_[..., :N].contiguous(), ckpt_[..., :N].contiguous() if need_ckpt else ckpt
    Bt, Ct = (_c(X.transpose(-1, -2), dt) for X in (B, C))            # (b, G, L, N), alive across the call
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
    ns = blk[1] if blk is not None else N                             # the kernels' state size
    do_ = dout.to(dt) if blk is not None else _c(dout, dt)            # the blocked kernels read dout strided
    ck, dlast_ = _pad_n(_c(ckpt, dt), ns), _pad_n(_c(dlast, dt), ns)
    du, ddelta = torch.empty_like(u_), torch.empty_like(u_)
    dA = torch.empty(batch, dim, ns, dtype=dt)
    dBt = torch.zeros(batch, GB, L, ns, dtype=dt)                     # (b, G, L, ns)
    dCt = torch.zeros(batch, GC, L, ns, dtype=dt)
    dD = torch.empty(batch, dim, dtype=dt)
    dz = torch.empty_like(u_) if z is not None else None
    dh0 = torch.empty(batch, dim, ns, dtype=dt) if h0 is not None else None
    Bt, Ct = (_state_rows(X, dt, ns) for X in (B, C))                 # (b, G, L, ns)
    ddb = None
    if blk is not None:                                                # d delta_bias summed per row in the kernel
        ddb_rows = torch.empty(batch, dim, dtype=dt) if delta_bias is not None else None
        Ap = _pad_n(A_, ns)                                             # named: alive across the call
        blk[0].ss_bwd_blk_f32(ptr(u_), ptr(dl_), ptr(Ap), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_),
                              ptr(reset), ptr(end_id), ptr(ck), ptr(do_, strided=True), ptr(dlast_),
                              ptr(du), ptr(ddelta), ptr(dA), ptr(dBt), ptr(dCt), ptr(dD), ptr(dz), ptr(dh0),
                              ptr(ddb_rows), batch, dim, L, GB, GC, nseq, CHUNK, int(softplus),
                              torch.get_num_threads(), *do_.stride())
        ddb = ddb_rows.sum(0) if ddb_rows is not None else None
    else:
        getattr(lib, "ss_bwd_f64" if dt == torch.float64 else "ss_bwd_f32")(
            ptr(u_), ptr(dl_), ptr(A_), ptr(Bt), ptr(Ct), ptr(D_), ptr(z_), ptr(db_), ptr(reset), ptr(end_id),
            ptr(ck), ptr(do_), ptr(dlast_),
            ptr(du), ptr(ddelta), ptr(dA), ptr(dBt), ptr(dCt), ptr(dD), ptr(dz), ptr(dh0),
            batch, dim, L, N, GB, GC, nseq, CHUNK, int(softplus), torch.get_num_threads())
    if ddb is None and delta_bias is not None:
        ddb = ddelta.sum((0, 2))
    return (du, ddelta, dA.sum(0)[:, :N], dBt[..., :N].transpose(-1, -2), dCt[..., :N].transpose(-1, -2),
            dD.sum(0) if D is not None else None, dz, ddb, None if dh0 is None else dh0[..., :N])


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
