"""Triton kernels of ``block_scan``: a two-level chunked parallel scan over time (any small K).

    forward:   h_t = A_t @ h_{t-1} + b_t                          (scan order, h_{-1} = h0)
    backward:  g_t = dL/dh_t + A_{t+1}^T @ g_{t+1}                 (reverse scan order, g_T = 0)
               dL/db_t = g_t;  dL/dA_t = g_t h_{t-1}^T;  dL/dh0 = A_0^T g_0

Both directions are one recurrence s_u = M_u @ s_{u-1} + x_u over a "run" u = 0 .. T-1: the forward
runs in scan order with M = A_t; the backward runs the other way with M = A^T of the step that
follows in scan order (zero for the first step of the run). The run is cut into chunks of BLOCK_T
steps, and the scan is parallel over (batch, channel block, chunk), as ParaRNN's CUDA reduction
splits a long sequence into segments:

    stage 1  (every chunk at once)  from zero state: chunk transfer P_c = M_last ... M_first and
                                    local end state e_c
    stage 2  (sequential in chunks) carry_{c+1} = P_c @ carry_c + e_c,   carry_0 = h0 (or 0)
    stage 3  (every chunk at once)  rerun each chunk from its carry, storing h (forward) or
                                    db = g and dA = g h_prev^T (backward)

Inside a chunk the state (BLOCK_D, KP) stays in registers and steps sequentially (KP = K rounded up
to a power of two, padding masked). A and b are read twice, h written once. This kernel does NOT
use tl.associative_scan: the combine of (A, b) pairs has K*K + K scalar components, which
tl.associative_scan can only take as that many separate tensors with a combine of fixed arity per K;
the chunked form handles every K with one kernel. K > MAX_K runs the pure-torch chunked scan
(``linear_scan/chunked.py``) on the same device instead. State and accumulation float32
(float64 for float64 inputs). Layout: A (B, T, D, K, K), b, h (B, T, D, K) contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from .._triton_aot import AotSpec
from ..linear_scan.reference import state_dtype
from ..linear_scan.triton_scan import io_cast, to_state

__all__ = ["block_scan_fwd", "block_scan_bwd", "MAX_K", "AOT_SPECS"]

MAX_K = 16


@triton.jit
def _bs_chunk_kernel(
    M, X, CARRY, PS, ES, OUT, DA, HP, H0,   # M: A (B, T, D, K, K); X, OUT, HP, DA's rows: (B, T, D, K)
    T, D, K, NC,                            # CARRY, ES: (B, NC, D, K); PS: (B, NC, D, K, K); H0 (B, D, K)
    STAGE: tl.constexpr, BWD: tl.constexpr, RUN_REV: tl.constexpr, HAS_H0: tl.constexpr,
    IS_F64: tl.constexpr, KP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    c = tl.program_id(2)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)                      # (BLOCK_D,)
    i = tl.arange(0, KP)
    dmask = d < D
    vmask = dmask[:, None] & (i < K)[None, :]                        # (BLOCK_D, KP)
    mmask = vmask[:, :, None] & (i < K)[None, None, :]               # (BLOCK_D, KP, KP)
    voff = d.to(tl.int64)[:, None] * K + i[None, :]                  # offsets inside one time row
    if BWD:   # M = A^T: element (i, j) of M is A[j, i]
        moff = d.to(tl.int64)[:, None, None] * K * K + i[None, None, :] * K + i[None, :, None]
    else:
        moff = d.to(tl.int64)[:, None, None] * K * K + i[None, :, None] * K + i[None, None, :]
    brow = pid_b.to(tl.int64) * T                                     # first time row of this batch
    crow = (pid_b.to(tl.int64) * NC + c) * D                          # first channel row of chunk c
    zero = to_state(tl.zeros([BLOCK_D, KP], dtype=tl.float32), IS_F64)
    if STAGE == 1:
        s = zero
        eye = tl.where((i[:, None] == i[None, :])[None, :, :] & mmask, 1.0, 0.0)
        P = to_state(eye, IS_F64) + to_state(tl.zeros([BLOCK_D, KP, KP], dtype=tl.float32), IS_F64)
    else:
        s = to_state(tl.load(CARRY + crow * K + voff, mask=vmask, other=0.0), IS_F64)
    if BWD:
        moff_t = d.to(tl.int64)[:, None, None] * K * K + i[None, :, None] * K + i[None, None, :]
        if HAS_H0:
            h0 = to_state(tl.load(H0 + pid_b.to(tl.int64) * D * K + voff, mask=vmask, other=0.0), IS_F64)
    u_end = tl.minimum(c * BLOCK_T + BLOCK_T, T)
    # no @triton.jit helper calls inside the loop: they are costly in the interpreter
    for u in range(c * BLOCK_T, u_end):
        t = u + RUN_REV * (T - 1 - 2 * u)                              # time index of run step u
        x = tl.load(X + (brow + t) * D * K + voff, mask=vmask, other=0.0).to(s.dtype)
        if BWD:   # coefficient of the step before in this run (none for u = 0)
            tm = (u - 1) + RUN_REV * (T - 1 - 2 * (u - 1))
            ucur = tl.zeros([BLOCK_D, KP, KP], dtype=tl.int32) + u
            m = tl.load(M + (brow + tm) * D * K * K + moff, mask=mmask & (ucur > 0), other=0.0).to(s.dtype)
        else:
            m = tl.load(M + (brow + t) * D * K * K + moff, mask=mmask, other=0.0).to(s.dtype)
        s = tl.sum(m * s[:, None, :], axis=2) + x                   # (BLOCK_D, KP)
        if STAGE == 1:
            Pn = tl.zeros_like(P)
            for k in tl.static_range(KP):                            # P <- m @ P
                mk = tl.sum(tl.where((i == k)[None, None, :], m, 0.0), axis=2)      # m[:, :, k]
                pk = tl.sum(tl.where((i == k)[None, :, None], P, 0.0), axis=1)      # P[:, k, :]
                Pn += mk[:, :, None] * pk[:, None, :]
            P = Pn
        else:
            tl.store(OUT + (brow + t) * D * K + voff, s, mask=vmask)
            if BWD:   # dA_t = g_t h_{t-1}^T, h_{t-1} being the next step of this run (h0 at the end)
                tp = (u + 1) + RUN_REV * (T - 1 - 2 * (u + 1))
                has_prev = (tl.zeros([BLOCK_D, KP], dtype=tl.int32) + u + 1) < T
                hp = tl.load(HP + (brow + tp) * D * K + voff, mask=vmask & has_prev, other=0.0).to(s.dtype)
                if HAS_H0:
                    hp = tl.where(has_prev, hp, h0)
                tl.store(DA + (brow + t) * D * K * K + moff_t, s[:, :, None] * hp[:, None, :], mask=mmask)
    if STAGE == 1:
        tl.store(ES + crow * K + voff, s, mask=vmask)
        tl.store(PS + crow * K * K + d.to(tl.int64)[:, None, None] * K * K + i[None, :, None] * K + i[None, None, :],
                 P, mask=mmask)


@triton.jit
def _bs_carry_kernel(
    CARRY, PS, ES, H0,                      # CARRY, ES: (B, NC, D, K); PS: (B, NC, D, K, K); H0: (B, D, K)
    D, K, NC,
    HAS_H0: tl.constexpr, IS_F64: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    i = tl.arange(0, KP)
    vmask = (d < D)[:, None] & (i < K)[None, :]
    mmask = vmask[:, :, None] & (i < K)[None, None, :]
    voff = d.to(tl.int64)[:, None] * K + i[None, :]
    moff = d.to(tl.int64)[:, None, None] * K * K + i[None, :, None] * K + i[None, None, :]
    s = to_state(tl.zeros([BLOCK_D, KP], dtype=tl.float32), IS_F64)
    if HAS_H0:
        s = to_state(tl.load(H0 + pid_b.to(tl.int64) * D * K + voff, mask=vmask, other=0.0), IS_F64)
    for c in range(0, NC):
        crow = (pid_b.to(tl.int64) * NC + c) * D
        tl.store(CARRY + crow * K + voff, s, mask=vmask)
        p = tl.load(PS + crow * K * K + moff, mask=mmask, other=0.0)
        e = tl.load(ES + crow * K + voff, mask=vmask, other=0.0)
        s = tl.sum(p * s[:, None, :], axis=2) + e


def _config(K: int, T: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_D, KP): about 512 state-matrix elements per program; one fixed config."""
    kp = triton.next_power_of_2(K)
    block_d = max(1, 512 // (kp * kp))
    block_t = 8 if triton_interpret() else 128  # small chunks under the interpreter: several per test
    return block_t, block_d, kp


def _run(M, X, h_init, reverse_run, bwd, out, dA=None, h=None, h0_for_dA=None):
    """Stages 1-3 of the chunked scan. M (B, T, D, K, K), X (B, T, D, K); writes out (and dA)."""
    B, T, D, K = X.shape
    sd = out.dtype
    bt, bd, kp = _config(K, T)
    nc = triton.cdiv(T, bt)
    carry = torch.empty((B, nc, D, K), dtype=sd, device=X.device)
    es = torch.empty_like(carry)
    ps = torch.empty((B, nc, D, K, K), dtype=sd, device=X.device)
    grid = (B, triton.cdiv(D, bd), nc)
    common = dict(BWD=bwd, RUN_REV=reverse_run, IS_F64=sd == torch.float64, KP=kp, BLOCK_T=bt, BLOCK_D=bd)
    dummy = out
    h0_da = h0_for_dA if h0_for_dA is not None else dummy
    _bs_chunk_kernel[grid](M, X, carry, ps, es, out, dA if dA is not None else dummy, h if h is not None else dummy,
                           h0_da, T, D, K, nc, STAGE=1, HAS_H0=False, **common)
    _bs_carry_kernel[(B, triton.cdiv(D, bd))](carry, ps, es, h_init if h_init is not None else dummy, D, K, nc,
                                              HAS_H0=h_init is not None, IS_F64=sd == torch.float64, KP=kp,
                                              BLOCK_D=bd)
    _bs_chunk_kernel[grid](M, X, carry, ps, es, out, dA if dA is not None else dummy, h if h is not None else dummy,
                           h0_da, T, D, K, nc, STAGE=3, HAS_H0=h0_for_dA is not None, **common)


def _fallback():
    from . import cpu
    return cpu


def block_scan_fwd(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """A: (B, T, D, K, K); b: (B, T, D, K); h0: (B, D, K) or None. Returns h (B, T, D, K), state dtype."""
    if b.shape[-1] > MAX_K:
        return _fallback().block_scan_fwd(A, b, h0, reverse)
    sd = state_dtype(A, b, h0)
    A, b = io_cast(A, b)
    h0 = None if h0 is None else h0.to(sd).contiguous()
    out = torch.empty(b.shape, dtype=sd, device=b.device)
    _run(A, b, h0, bool(reverse), False, out)
    return out


def block_scan_bwd(go, A, h, h0, reverse):
    """go, h: (B, T, D, K); A: (B, T, D, K, K); h0: (B, D, K) or None. Returns (dA, db, dh0)."""
    if h.shape[-1] > MAX_K:
        return _fallback().block_scan_bwd(go, A, h, h0, reverse)
    sd = state_dtype(A, h, h0)
    go, A, h = io_cast(go, A, h)
    h0 = None if h0 is None else h0.to(sd).contiguous()
    db = torch.empty(h.shape, dtype=sd, device=h.device)
    dA = torch.empty(A.shape, dtype=sd, device=h.device)
    _run(A, go, None, not reverse, True, db, dA=dA, h=h, h0_for_dA=h0)
    t0 = -1 if reverse else 0
    dh0 = (A[:, t0].to(sd).transpose(-1, -2) @ db[:, t0].unsqueeze(-1)).squeeze(-1)  # A_0^T g_0: (B, D, K)
    return dA, db, dh0


_CHUNK_CONST = ("STAGE", "BWD", "RUN_REV", "HAS_H0", "IS_F64", "KP", "BLOCK_T", "BLOCK_D")
_CARRY_CONST = ("HAS_H0", "IS_F64", "KP", "BLOCK_D")


def _chunk_spec(t, s, label, **const):
    sig = {"M": f"*{t}", "X": f"*{t}", "CARRY": f"*{s}", "PS": f"*{s}", "ES": f"*{s}", "OUT": f"*{s}",
           "DA": f"*{s}", "HP": f"*{t}", "H0": f"*{s}", "T": "i32", "D": "i32", "K": "i32", "NC": "i32"}
    sig.update({c: "constexpr" for c in _CHUNK_CONST})
    return AotSpec(module=__name__, name="_bs_chunk_kernel", signature=sig, constexprs=const, label=label)


AOT_SPECS = [
    _chunk_spec(t, s, f"{t}-K{k}-stage{st}-bwd{int(bwd)}", STAGE=st, BWD=bwd, RUN_REV=bwd, HAS_H0=bwd,
                IS_F64=t == "fp64", KP=kp, BLOCK_T=128, BLOCK_D=512 // (kp * kp))
    for t, s, k, kp in (("fp32", "fp32", 2, 2), ("bf16", "fp32", 3, 4), ("fp64", "fp64", 2, 2))
    for st in (1, 3) for bwd in (False, True)
] + [
    AotSpec(module=__name__, name="_bs_carry_kernel",
            signature={"CARRY": "*fp32", "PS": "*fp32", "ES": "*fp32", "H0": "*fp32", "D": "i32", "K": "i32",
                       "NC": "i32", **{c: "constexpr" for c in _CARRY_CONST}},
            constexprs=dict(HAS_H0=True, IS_F64=False, KP=2, BLOCK_D=128), label="fp32-K2"),
]
