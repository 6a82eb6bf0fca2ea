"""Fused Triton forward of ParaGRU's Newton solve: cell, Jacobian, scan and convergence in one kernel.

ParaGRU (ANCHORS.md), u = (u_z, u_r, u_h) the precomputed input projections, a_* diagonal weights:
    z = sigmoid(a_z h + u_z);  r = sigmoid(a_r h + u_r);  c = tanh(a_h (h r) + u_h);  f = h + z (c - h)
    df/dh = z(1-z) a_z (c - h) + z (1 - c^2) a_h (r + h r (1-r) a_r) + (1 - z)
Newton on a tile of BLOCK_T steps x BLOCK_H channels, all iterations in registers:
    h_t = f(h0, u_t)                                       (initial guess)
    repeat:  A_t = df/dh(h_{t-1}), r_t = f(h_{t-1}, u_t) - h_t
             stop if |r_t| <= atol + rtol |h_t| everywhere in the tile
             delta = scan of delta_t = A_t delta_{t-1} + r_t  (tl.associative_scan), h += delta
One program per (batch, channel block) walks the sequence in tiles of BLOCK_T steps (Newton inside a
tile, the tile's last state is h0 of the next). h_{t-1} is read back through the output buffer
(store, barrier, shifted load). Per program it writes the largest iteration count, the largest final
residual and a flag (1 converged everywhere, 0 not: the caller then applies on_fail).
Layouts: u (B, T, 3H) contiguous, weights (3, H), h0 (B, H), out (B, T, H); all float32 inside.
The backward is the implicit adjoint in ``adjoint.py`` (reverse linear_scan + one vjp of the cell).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from .._triton_aot import AotSpec
from .._triton_common import combine_affine as _combine

__all__ = ["paragru_newton_triton", "launch_newton_kernel", "AOT_SPECS"]


@triton.jit
def _gru(hp, uz, ur, uh, az, ar, ah):
    z = tl.sigmoid(az * hp + uz)
    r = tl.sigmoid(ar * hp + ur)
    c = 2.0 * tl.sigmoid(2.0 * (ah * (hp * r) + uh)) - 1.0  # tanh
    f = hp + z * (c - hp)
    dfdh = z * (1.0 - z) * az * (c - hp) + z * (1.0 - c * c) * ah * (r + hp * r * (1.0 - r) * ar) + (1.0 - z)
    return f, dfdh


@triton.jit
def _paragru_newton_fwd_kernel(
    U, W, H0, OUT, ITERS, RESID, OK,   # U (B, T, 3H); W (3, H); H0 (B, H); OUT (B, T, H); ITERS/RESID/OK (B, NHB)
    T, H, max_iters, atol, rtol,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    nhb = tl.num_programs(1)
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    rows = tl.arange(0, BLOCK_T)
    az = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    ar = tl.load(W + H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    ah = tl.load(W + 2 * H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    h0 = tl.load(H0 + pid_b.to(tl.int64) * H + cols, mask=cmask, other=0.0).to(tl.float32)
    ubase = pid_b.to(tl.int64) * T * 3 * H
    obase = pid_b.to(tl.int64) * T * H
    iters = 0
    ok = 1
    worst_res = 0.0
    for t0 in range(0, T, BLOCK_T):
        t = t0 + rows
        m = (t < T)[:, None] & cmask[None, :]
        uoff = ubase + t.to(tl.int64)[:, None] * 3 * H + cols[None, :]
        uz = tl.load(U + uoff, mask=m, other=0.0).to(tl.float32)
        ur = tl.load(U + uoff + H, mask=m, other=0.0).to(tl.float32)
        uh = tl.load(U + uoff + 2 * H, mask=m, other=0.0).to(tl.float32)
        ooff = obase + t.to(tl.int64)[:, None] * H + cols[None, :]
        first = (rows == 0)[:, None]
        h, _ = _gru(tl.zeros([BLOCK_T, BLOCK_H], tl.float32) + h0[None, :], uz, ur, uh, az, ar, ah)
        it = 0
        state = 0  # 0 running, 1 converged, 2 failed
        res = 0.0
        while state == 0:
            tl.store(OUT + ooff, h, mask=m)
            tl.debug_barrier()
            hp = tl.load(OUT + ooff - H, mask=m & ~first, other=0.0)
            hp = tl.where(first, h0[None, :], hp)                       # h_{t-1}, h0 at the tile start
            tl.debug_barrier()
            f, a = _gru(hp, uz, ur, uh, az, ar, ah)
            r = tl.where(m, f - h, 0.0)
            good = tl.abs(r) <= atol + rtol * tl.abs(h)                 # False where r is NaN
            n_bad = tl.sum(tl.sum(tl.where(good, 0, 1), axis=1), axis=0)
            n_nan = tl.sum(tl.sum(tl.where(r == r, 0, 1), axis=1), axis=0)
            res = tl.max(tl.max(tl.abs(r), axis=1), axis=0)
            if n_bad == 0:
                state = 1
            elif (it >= max_iters) | (n_nan > 0):                       # budget spent, or NaN/inf
                state = 2
            else:
                _, delta = tl.associative_scan((tl.where(m, a, 1.0), r), 0, _combine)
                h = h + delta
                it += 1
        if state == 2:
            ok = 0
        iters = tl.maximum(iters, it)
        worst_res = tl.maximum(worst_res, res)
        tl.store(OUT + ooff, h, mask=m)
        last = tl.minimum(T - t0, BLOCK_T) - 1
        h0 = tl.sum(tl.where((rows == last)[:, None], h, 0.0), axis=0)  # carry into the next tile
    tl.store(ITERS + pid_b * nhb + pid_h, iters)
    tl.store(RESID + pid_b * nhb + pid_h, worst_res)
    tl.store(OK + pid_b * nhb + pid_h, ok)


def _blocks(T: int, H: int) -> tuple[int, int]:
    if triton_interpret():
        return max(2, min(16, triton.next_power_of_2(T))), max(2, min(16, triton.next_power_of_2(H)))
    return max(16, min(64, triton.next_power_of_2(T))), 16  # 64 x 16 tile: no spills at 4 warps (AOT)


def launch_newton_kernel(kernel, u: torch.Tensor, weights: torch.Tensor, h0: torch.Tensor, state_tail: tuple,
                         max_iters: int, atol: float, rtol: float):
    """Run a fused Newton kernel (ParaGRU / ParaLSTM) over u (B, T, 3H) from h0 (B, H, *state_tail).
    Returns (states (B, T, H, *state_tail) fp32, max iterations, max residual, converged everywhere)."""
    B, T, H3 = u.shape
    H = H3 // 3
    u = u.contiguous()
    w = weights.detach().to(torch.float32).contiguous()
    h0 = h0.detach().to(torch.float32).contiguous()
    out = torch.empty(B, T, H, *state_tail, device=u.device, dtype=torch.float32)
    BT, BH = _blocks(T, H)
    nhb = triton.cdiv(H, BH)
    iters = torch.zeros(B, nhb, device=u.device, dtype=torch.int32)
    resid = torch.zeros(B, nhb, device=u.device, dtype=torch.float32)
    ok = torch.zeros(B, nhb, device=u.device, dtype=torch.int32)
    kernel[(B, nhb)](u, w, h0, out, iters, resid, ok, T, H, max_iters, float(atol), float(rtol),
                     BLOCK_T=BT, BLOCK_H=BH, num_warps=4)
    return out, int(iters.max()), float(resid.max()), bool(ok.min() == 1)  # one host sync


def paragru_newton_triton(u: torch.Tensor, weights: torch.Tensor, h0: torch.Tensor, max_iters: int,
                          atol: float, rtol: float):
    """u (B, T, 3H), weights (3, H) (already bounded), h0 (B, H) -> (h (B, T, H) fp32, iters, resid, ok)."""
    return launch_newton_kernel(_paragru_newton_fwd_kernel, u, weights, h0, (), max_iters, atol, rtol)


AOT_SPECS = [
    AotSpec(module=__name__, name="_paragru_newton_fwd_kernel",
            signature={"U": f"*{dt}", "W": "*fp32", "H0": "*fp32", "OUT": "*fp32", "ITERS": "*i32", "RESID": "*fp32",
                       "OK": "*i32", "T": "i32", "H": "i32", "max_iters": "i32", "atol": "fp32", "rtol": "fp32",
                       "BLOCK_T": "constexpr", "BLOCK_H": "constexpr"},
            constexprs={"BLOCK_T": 64, "BLOCK_H": 16}, label=dt)
    for dt in ("fp32", "bf16")
]
