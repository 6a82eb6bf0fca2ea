"""Fused Triton forward of ParaLSTM's Newton solve (2x2 Jacobian blocks), one kernel for all iterations.

ParaLSTM (ANCHORS.md; CIFG with peepholes, state [c, h] per channel), u = (u_f, u_c, u_o):
    f = sigmoid(a_f h + u_f + p_f c_prev);  c~ = tanh(a_c h + u_c);  c = f c_prev + (1 - f) c~
    o = sigmoid(a_o h + u_o + p_o c);  h' = o tanh(c)
Jacobian block per channel, rows (c', h'), columns (c_prev, h):
    dc/dc_prev = f + f(1-f) p_f (c_prev - c~);   dc/dh = f(1-f) a_f (c_prev - c~) + (1-f)(1-c~^2) a_c
    dh'/dc = o(1-o) p_o tanh(c) + o (1 - tanh^2 c)
    dh'/dc_prev = dh'/dc dc/dc_prev;             dh'/dh = o(1-o) a_o tanh(c) + dh'/dc dc/dh
Newton on tiles of BLOCK_T steps x BLOCK_H channels exactly as ``triton_paragru`` (initial guess
f(h0, u_t), residual check, tile carry), the linear system delta_t = A_t delta_{t-1} + r_t solved by
tl.associative_scan over the six components of the 2x2 affine map:
    (A1, b1) then (A2, b2) = (A2 A1, A2 b1 + b2).
Layouts: u (B, T, 3H), weights (5, H) = a_f, a_c, a_o, p_f, p_o; h0 (B, H, 2); out (B, T, H, 2).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_aot import AotSpec
from .triton_paragru import launch_newton_kernel

__all__ = ["paralstm_newton_triton", "AOT_SPECS"]


@triton.jit
def _combine2x2(p00, p01, p10, p11, p0, p1, q00, q01, q10, q11, q0, q1):
    """(P, p) earlier, (Q, q) later: x -> Q (P x + p) + q."""
    return (q00 * p00 + q01 * p10, q00 * p01 + q01 * p11, q10 * p00 + q11 * p10, q10 * p01 + q11 * p11,
            q00 * p0 + q01 * p1 + q0, q10 * p0 + q11 * p1 + q1)


@triton.jit
def _lstm(cp, hp, uf, uc, uo, af, ac, ao, pf, po):
    f = tl.sigmoid(af * hp + uf + pf * cp)
    ct = 2.0 * tl.sigmoid(2.0 * (ac * hp + uc)) - 1.0  # tanh
    c = ct + f * (cp - ct)
    o = tl.sigmoid(ao * hp + uo + po * c)
    tc = 2.0 * tl.sigmoid(2.0 * c) - 1.0
    df = f * (1.0 - f)
    dc_dcp = f + df * pf * (cp - ct)
    dc_dh = df * af * (cp - ct) + (1.0 - f) * (1.0 - ct * ct) * ac
    do = o * (1.0 - o)
    dh_dc = do * po * tc + o * (1.0 - tc * tc)
    return c, o * tc, dc_dcp, dc_dh, dh_dc * dc_dcp, do * ao * tc + dh_dc * dc_dh


@triton.jit
def _paralstm_newton_fwd_kernel(
    U, W, H0, OUT, ITERS, RESID, OK,   # U (B, T, 3H); W (5, H); H0 (B, H, 2); OUT (B, T, H, 2); ITERS/RESID/OK (B, NHB)
    T, H, max_iters, atol, rtol,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    nhb = tl.num_programs(1)
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    rows = tl.arange(0, BLOCK_T)
    af = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    ac = tl.load(W + H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    ao = tl.load(W + 2 * H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    pf = tl.load(W + 3 * H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    po = tl.load(W + 4 * H + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    s0 = pid_b.to(tl.int64) * H * 2 + cols * 2
    c0 = tl.load(H0 + s0, mask=cmask, other=0.0).to(tl.float32)
    h0 = tl.load(H0 + s0 + 1, mask=cmask, other=0.0).to(tl.float32)
    ubase = pid_b.to(tl.int64) * T * 3 * H
    obase = pid_b.to(tl.int64) * T * H * 2
    iters = 0
    ok = 1
    worst_res = 0.0
    for t0 in range(0, T, BLOCK_T):
        t = t0 + rows
        m = (t < T)[:, None] & cmask[None, :]
        uoff = ubase + t.to(tl.int64)[:, None] * 3 * H + cols[None, :]
        uf = tl.load(U + uoff, mask=m, other=0.0).to(tl.float32)
        uc = tl.load(U + uoff + H, mask=m, other=0.0).to(tl.float32)
        uo = tl.load(U + uoff + 2 * H, mask=m, other=0.0).to(tl.float32)
        ooff = obase + t.to(tl.int64)[:, None] * H * 2 + cols[None, :] * 2
        first = (rows == 0)[:, None]
        zero = tl.zeros([BLOCK_T, BLOCK_H], tl.float32)
        c, h, _, _, _, _ = _lstm(zero + c0[None, :], zero + h0[None, :], uf, uc, uo, af, ac, ao, pf, po)
        it = 0
        state = 0  # 0 running, 1 converged, 2 failed
        res = 0.0
        while state == 0:
            tl.store(OUT + ooff, c, mask=m)
            tl.store(OUT + ooff + 1, h, mask=m)
            tl.debug_barrier()
            cp = tl.where(first, c0[None, :], tl.load(OUT + ooff - 2 * H, mask=m & ~first, other=0.0))
            hp = tl.where(first, h0[None, :], tl.load(OUT + ooff - 2 * H + 1, mask=m & ~first, other=0.0))
            tl.debug_barrier()
            fc, fh, a00, a01, a10, a11 = _lstm(cp, hp, uf, uc, uo, af, ac, ao, pf, po)
            rc = tl.where(m, fc - c, 0.0)
            rh = tl.where(m, fh - h, 0.0)
            good = (tl.abs(rc) <= atol + rtol * tl.abs(c)) & (tl.abs(rh) <= atol + rtol * tl.abs(h))
            n_bad = tl.sum(tl.sum(tl.where(good, 0, 1), axis=1), axis=0)
            n_nan = tl.sum(tl.sum(tl.where((rc == rc) & (rh == rh), 0, 1), axis=1), axis=0)
            res = tl.maximum(tl.max(tl.max(tl.abs(rc), axis=1), axis=0), tl.max(tl.max(tl.abs(rh), axis=1), axis=0))
            if n_bad == 0:
                state = 1
            elif (it >= max_iters) | (n_nan > 0):
                state = 2
            else:
                _, _, _, _, dc, dh = tl.associative_scan(
                    (tl.where(m, a00, 1.0), tl.where(m, a01, 0.0), tl.where(m, a10, 0.0), tl.where(m, a11, 1.0), rc, rh),
                    0, _combine2x2)
                c = c + dc
                h = h + dh
                it += 1
        if state == 2:
            ok = 0
        iters = tl.maximum(iters, it)
        worst_res = tl.maximum(worst_res, res)
        tl.store(OUT + ooff, c, mask=m)
        tl.store(OUT + ooff + 1, h, mask=m)
        last = (rows == tl.minimum(T - t0, BLOCK_T) - 1)[:, None]
        c0 = tl.sum(tl.where(last, c, 0.0), axis=0)  # carry into the next tile
        h0 = tl.sum(tl.where(last, h, 0.0), axis=0)
    tl.store(ITERS + pid_b * nhb + pid_h, iters)
    tl.store(RESID + pid_b * nhb + pid_h, worst_res)
    tl.store(OK + pid_b * nhb + pid_h, ok)


def paralstm_newton_triton(u: torch.Tensor, weights: torch.Tensor, h0: torch.Tensor, max_iters: int,
                           atol: float, rtol: float):
    """u (B, T, 3H), weights (5, H) (already bounded), h0 (B, H, 2) -> (s (B, T, H, 2) fp32, iters, resid, ok)."""
    return launch_newton_kernel(_paralstm_newton_fwd_kernel, u, weights, h0, (2,), max_iters, atol, rtol)


AOT_SPECS = [
    AotSpec(module=__name__, name="_paralstm_newton_fwd_kernel",
            signature={"U": f"*{dt}", "W": "*fp32", "H0": "*fp32", "OUT": "*fp32", "ITERS": "*i32", "RESID": "*fp32",
                       "OK": "*i32", "T": "i32", "H": "i32", "max_iters": "i32", "atol": "fp32", "rtol": "fp32",
                       "BLOCK_T": "constexpr", "BLOCK_H": "constexpr"},
            constexprs={"BLOCK_T": 64, "BLOCK_H": 16}, label=dt)
    for dt in ("fp32", "bf16")
]
