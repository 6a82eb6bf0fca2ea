"""Triton kernels of ``linear_scan``: tiled parallel scans over time, carry across tiles.

    forward:   h_t = a_t * h_{t-1} + b_t                          (scan order, h_{-1} = h0)
    backward:  g_t = dL/dh_t + a_{t+1} * g_{t+1}                   (reverse scan order)
               dL/db_t = g_t;  dL/da_t = g_t * h_{t-1};  dL/dh0 = a_0 * g_0

One program per (batch, block of BLOCK_D channels) walks time in tiles of BLOCK_T steps. Inside a
tile, tl.associative_scan over the time axis composes the pairs (a, b) with
    (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2),
giving the tile's prefix pairs (Acum_t, Bcum_t); then h_t = Acum_t * carry + Bcum_t and the carry
becomes the tile's last h. Rows past the end load the identity pair (1, 0), so the last row of
every tile holds the carry. Reverse scans (and the backward, which runs against the forward's
order) load tiles at mirrored time indices; tl.associative_scan(reverse=True) is never used.
Layout (B, T, D) contiguous; state and accumulation float32 (float64 for float64 inputs: IS_F64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from .._triton_aot import AotSpec
from .._triton_common import combine_affine as _combine
from .._triton_common import to_acc as to_state
from .reference import state_dtype

__all__ = ["linear_scan_fwd", "linear_scan_bwd", "AOT_SPECS"]


@triton.jit
def _last_row(x, BLOCK_T: tl.constexpr):
    rows = tl.arange(0, BLOCK_T)
    return tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, x, 0.0), axis=0)


@triton.jit
def _time_of(p, T, REVERSE: tl.constexpr):
    """Time index of scan position p (positions run 0 .. T-1 in scan order)."""
    if REVERSE:
        t = T - 1 - p
    else:
        t = p
    return t


@triton.jit
def _ls_fwd_kernel(
    A, X, H0, OUT,                     # A, X (= b), OUT: (B, T, D); H0: (B, D)
    T, D,
    HAS_H0: tl.constexpr, REVERSE: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows = tl.arange(0, BLOCK_T)
    base = pid_b.to(tl.int64) * T * D
    h = to_state(tl.zeros([BLOCK_D], dtype=tl.float32), IS_F64)
    if HAS_H0:
        h = to_state(tl.load(H0 + pid_b.to(tl.int64) * D + cols, mask=cmask, other=0.0), IS_F64)
    for p0 in range(0, T, BLOCK_T):
        p = p0 + rows                                                   # scan positions (BLOCK_T,)
        t = _time_of(p, T, REVERSE)
        m = (p < T)[:, None] & cmask[None, :]
        offs = base + t.to(tl.int64)[:, None] * D + cols[None, :]       # (BLOCK_T, BLOCK_D)
        a = to_state(tl.load(A + offs, mask=m, other=1.0), IS_F64)
        b = to_state(tl.load(X + offs, mask=m, other=0.0), IS_F64)
        acum, bcum = tl.associative_scan((a, b), 0, _combine)
        hs = acum * h[None, :] + bcum
        tl.store(OUT + offs, hs, mask=m)
        h = _last_row(hs, BLOCK_T)


@triton.jit
def _ls_bwd_kernel(
    GO, A, H, H0, DA, DB, DH0,         # GO, A, H, DA, DB: (B, T, D); H0, DH0: (B, D)
    T, D,
    HAS_H0: tl.constexpr, REVERSE: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows = tl.arange(0, BLOCK_T)
    base = pid_b.to(tl.int64) * T * D
    g = to_state(tl.zeros([BLOCK_D], dtype=tl.float32), IS_F64)
    h0 = to_state(tl.zeros([BLOCK_D], dtype=tl.float32), IS_F64)
    if HAS_H0:
        h0 = to_state(tl.load(H0 + pid_b.to(tl.int64) * D + cols, mask=cmask, other=0.0), IS_F64)
    for q0 in range(0, T, BLOCK_T):
        p = T - 1 - (q0 + rows)                                         # scan positions, descending
        valid = p >= 0
        m = valid[:, None] & cmask[None, :]
        col = cols[None, :]
        offs = base + _time_of(p, T, REVERSE).to(tl.int64)[:, None] * D + col
        offs_next = base + _time_of(p + 1, T, REVERSE).to(tl.int64)[:, None] * D + col
        offs_prev = base + _time_of(p - 1, T, REVERSE).to(tl.int64)[:, None] * D + col
        go = to_state(tl.load(GO + offs, mask=m, other=0.0), IS_F64)
        a_next = to_state(tl.load(A + offs_next, mask=m & (p + 1 < T)[:, None], other=0.0), IS_F64)
        a_next = tl.where(m, a_next, 1.0)                               # identity past the end
        acum, gcum = tl.associative_scan((a_next, go), 0, _combine)
        gs = acum * g[None, :] + gcum                                   # g at positions p
        h_prev = to_state(tl.load(H + offs_prev, mask=m & (p >= 1)[:, None], other=0.0), IS_F64)
        h_prev = tl.where((p == 0)[:, None], h0[None, :], h_prev)
        tl.store(DB + offs, gs, mask=m)
        tl.store(DA + offs, gs * h_prev, mask=m)
        g = _last_row(gs, BLOCK_T)
    a0 = to_state(tl.load(A + base + _time_of(0, T, REVERSE).to(tl.int64) * D + cols, mask=cmask, other=0.0),
                   IS_F64)
    tl.store(DH0 + pid_b.to(tl.int64) * D + cols, a0 * g, mask=cmask)


def _config(D: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_D, num_warps); one fixed config (no autotuning, none under the interpreter)."""
    if triton_interpret():  # small tiles: the interpreter scans element by element in Python
        return 16, min(64, triton.next_power_of_2(max(D, 1))), 1
    return 64, 32, 4  # sm_90: 123 (fwd) / 159 (bwd) registers, no spills; 128 x 32 spills in the bwd


def io_cast(*tensors):
    """Cast to one I/O dtype (promote of the inputs, float32 at least for state-sized tensors)."""
    dt = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dt = torch.promote_types(dt, t.dtype)
    return [None if t is None else t.to(dt).contiguous() for t in tensors]


def linear_scan_fwd(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """a, b: (B, T, D); h0: (B, D) or None. Returns h (B, T, D) in dtype promote(a, b)."""
    sd = state_dtype(a, b, h0)
    a, b = io_cast(a, b)
    h0 = None if h0 is None else h0.to(sd).contiguous()
    B, T, D = b.shape
    out = torch.empty_like(b)
    bt, bd, nw = _config(D)
    _ls_fwd_kernel[(B, triton.cdiv(D, bd))](
        a, b, h0 if h0 is not None else out, out, T, D,
        HAS_H0=h0 is not None, REVERSE=bool(reverse), IS_F64=sd == torch.float64,
        BLOCK_T=bt, BLOCK_D=bd, num_warps=nw,
    )
    return out


def linear_scan_bwd(go, a, h, h0, reverse):
    """go, a, h: (B, T, D); h0: (B, D) or None. Returns (da, db, dh0) in the state dtype."""
    sd = state_dtype(a, h, h0)
    go, a, h = io_cast(go, a, h)
    h0 = None if h0 is None else h0.to(sd).contiguous()
    B, T, D = a.shape
    da = torch.empty((B, T, D), dtype=sd, device=a.device)
    db = torch.empty_like(da)
    dh0 = torch.empty((B, D), dtype=sd, device=a.device)
    bt, bd, nw = _config(D)
    _ls_bwd_kernel[(B, triton.cdiv(D, bd))](
        go, a, h, h0 if h0 is not None else dh0, da, db, dh0, T, D,
        HAS_H0=h0 is not None, REVERSE=bool(reverse), IS_F64=sd == torch.float64,
        BLOCK_T=bt, BLOCK_D=bd, num_warps=nw,
    )
    return da, db, dh0


_CONST = ("HAS_H0", "REVERSE", "IS_F64", "BLOCK_T", "BLOCK_D")


def _spec(name, sig, label, **const):
    sig = dict(sig, **{c: "constexpr" for c in _CONST})
    return AotSpec(module=__name__, name=name, signature=sig, constexprs=const, label=label)


AOT_SPECS = [
    _spec("_ls_fwd_kernel", {"A": f"*{t}", "X": f"*{t}", "H0": f"*{s}", "OUT": f"*{t}", "T": "i32", "D": "i32"},
          f"{t}-rev{int(rev)}", HAS_H0=True, REVERSE=rev, IS_F64=t == "fp64", BLOCK_T=64, BLOCK_D=32)
    for t, s, rev in (("fp32", "fp32", False), ("bf16", "fp32", True), ("fp64", "fp64", False))
] + [
    _spec("_ls_bwd_kernel", {"GO": f"*{t}", "A": f"*{t}", "H": f"*{t}", "H0": f"*{s}", "DA": f"*{s}",
                             "DB": f"*{s}", "DH0": f"*{s}", "T": "i32", "D": "i32"},
          f"{t}-rev{int(rev)}", HAS_H0=True, REVERSE=rev, IS_F64=t == "fp64", BLOCK_T=64, BLOCK_D=32)
    for t, s, rev in (("fp32", "fp32", False), ("bf16", "fp32", True), ("fp64", "fp64", False))
]
