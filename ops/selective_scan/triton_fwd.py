"""Selective-scan forward Triton kernel (+ the small jit helpers the backward shares).

One program per (block of BLOCK_D channels, batch row). It walks L in tiles of BLOCK_T steps;
inside a tile the pairs (a_t, b_t) = (exp(dl_t A), dl_t u_t B_t), shaped (BLOCK_D, BLOCK_N,
BLOCK_T), are combined by ``tl.associative_scan`` with (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2),
and the state entering the tile is carried across tiles (the first carry is 0):

    h_t = acum_t * h_carry + bcum_t;   y_t = sum_n C_t[n] h_t[n] + D u_t;   y_t *= silu(z_t)

A sequence start (START_ID[t] = i >= 0, see ``_seqs``) sets a_t = 0, which cuts the carry and the
in-tile history, and with initial states (HAS_H0) adds a_t h0_i to b_t, h0_i the sequence's state
before its start (H0 laid out like LAST). The
state entering every tile is written to ``CKPT`` (batch, dim, n_tiles, N) for the backward; the
state at each sequence end goes to ``LAST`` (batch, n_seqs, dim, N). State and accumulation are
float32 (float64 when IS_F64). All channels of a block read one B/C group (the launcher picks
BLOCK_D dividing dim // G).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_aot import AotSpec
from .._triton_common import combine_affine as _combine
from .._triton_common import to_acc as _acc


@triton.jit
def _softplus(x):
    # log1p(exp(-|x|)) via log(w) * e / (w - 1), w = 1 + e: accurate for tiny e; torch's threshold 20
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + lp)


@triton.jit
def _load_delta(DELTA, offs, mask, bias, SOFTPLUS: tl.constexpr, IS_F64: tl.constexpr):
    """raw = delta + bias, dl = softplus(raw) or raw; (BLOCK_D, BLOCK_T)."""
    raw = _acc(tl.load(DELTA + offs, mask=mask, other=0.0), IS_F64) + bias[:, None]
    if SOFTPLUS:
        dl = _softplus(raw)
    else:
        dl = raw
    return raw, dl


@triton.jit
def _load_channel_vec(P, offs_d, mask_d, HAS: tl.constexpr, IS_F64: tl.constexpr):
    """(BLOCK_D,) per-channel vector (D or delta_bias), zeros when absent."""
    if HAS:
        v = _acc(tl.load(P + offs_d, mask=mask_d, other=0.0), IS_F64)
    else:
        v = _acc(tl.zeros(offs_d.shape, dtype=tl.float32), IS_F64)
    return v


@triton.jit
def _seq_states(H0, sid, pid_b, nseq, dim, N, offs_d, offs_n, mask_dn, IS_F64: tl.constexpr):
    """(BD, BN, BT): the initial state of the sequence starting at each step (sid >= 0), 0 elsewhere."""
    p = H0 + ((pid_b * nseq + sid[None, None, :]) * dim + offs_d[:, None, None]) * N + offs_n[None, :, None]
    return _acc(tl.load(p, mask=(sid >= 0)[None, None, :] & mask_dn[:, :, None], other=0.0), IS_F64)


@triton.jit
def _ss_fwd_kernel(
    U, DELTA, A, B, C, D, Z, DBIAS, H0, START_ID, END_ID,  # U, DELTA, Z (b, dim, L); A (dim, N); B (b, GB, N, L); C (b, GC, N, L); H0 (b, nseq, dim, N)
    Y, LAST, CKPT,                                       # Y (b, dim, L); LAST (b, nseq, dim, N); CKPT (b, dim, n_tiles, N)
    dim, L, N, GB, GC, nseq, n_tiles,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    WRITE_CKPT: tl.constexpr, IS_F64: tl.constexpr, HAS_H0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d0 = pid_d * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    jj = tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A_ = _acc(tl.load(A + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0), IS_F64)   # (BD, BN)
    bias = _load_channel_vec(DBIAS, offs_d, mask_d, HAS_DBIAS, IS_F64)
    Dv = _load_channel_vec(D, offs_d, mask_d, HAS_D, IS_F64)
    row = (pid_b * dim + offs_d) * L                                        # (BD,) int64
    B_base = B + (pid_b * GB + d0 // (dim // GB)) * N * L
    C_base = C + (pid_b * GC + d0 // (dim // GC)) * N * L
    ck_row = (pid_b * dim + offs_d) * n_tiles                               # (BD,)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=A_.dtype)                      # (BD, BN) state
    for tile in range(0, n_tiles):
        t0 = tile * BLOCK_T
        offs_t = t0 + jj
        mask_t = offs_t < L
        if WRITE_CKPT:
            tl.store(CKPT + (ck_row[:, None] + tile) * N + offs_n[None, :], h, mask=mask_dn)
        m_dt = mask_d[:, None] & mask_t[None, :]
        m_nt = mask_n[:, None] & mask_t[None, :]
        offs_dt = row[:, None] + offs_t[None, :]
        u = _acc(tl.load(U + offs_dt, mask=m_dt, other=0.0), IS_F64)       # (BD, BT)
        raw, dl = _load_delta(DELTA, offs_dt, m_dt, bias, SOFTPLUS, IS_F64)
        sid = tl.load(START_ID + offs_t, mask=mask_t, other=-1)              # (BT,)
        Bv = _acc(tl.load(B_base + offs_n[:, None] * L + offs_t[None, :], mask=m_nt, other=0.0), IS_F64)  # (BN, BT)
        Cv = _acc(tl.load(C_base + offs_n[:, None] * L + offs_t[None, :], mask=m_nt, other=0.0), IS_F64)
        a = tl.exp(dl[:, None, :] * A_[:, :, None])                          # (BD, BN, BT)
        bx = (dl * u)[:, None, :] * Bv[None, :, :]
        if HAS_H0:
            bx += a * _seq_states(H0, sid, pid_b, nseq, dim, N, offs_d, offs_n, mask_dn, IS_F64)
        a = tl.where((sid >= 0)[None, None, :], 0.0, a)
        a = tl.where(mask_t[None, None, :], a, 1.0)
        ac, bc = tl.associative_scan((a, bx), 2, _combine)
        hs = ac * h[:, :, None] + bc                                         # h_t, (BD, BN, BT)
        y = tl.sum(hs * Cv[None, :, :], axis=1) + Dv[:, None] * u            # (BD, BT)
        if HAS_Z:
            zz = _acc(tl.load(Z + offs_dt, mask=m_dt, other=0.0), IS_F64)
            y = y * zz * tl.sigmoid(zz)
        tl.store(Y + offs_dt, y, mask=m_dt)
        e = tl.load(END_ID + offs_t, mask=mask_t, other=-1)                  # (BT,)
        lp = LAST + ((pid_b * nseq + e[None, None, :]) * dim + offs_d[:, None, None]) * N + offs_n[None, :, None]
        tl.store(lp, hs, mask=(e >= 0)[None, None, :] & mask_dn[:, :, None])
        # positions past L are identity steps, so the last column is the state after the tile
        h = tl.sum(tl.where((jj == BLOCK_T - 1)[None, None, :], hs, 0.0), axis=2)


def _sig(dtype: str, ckpt: bool):
    p, acc = f"*{dtype}", "*fp64" if dtype == "fp64" else "*fp32"
    return {"U": p, "DELTA": p, "A": p, "B": p, "C": p, "D": p, "Z": p, "DBIAS": p, "H0": acc, "START_ID": "*i32",
            "END_ID": "*i32", "Y": p, "LAST": acc, "CKPT": acc,
            "dim": "i32", "L": "i32", "N": "i32", "GB": "i32", "GC": "i32", "nseq": "i32", "n_tiles": "i32",
            "HAS_D": "constexpr", "HAS_Z": "constexpr", "HAS_DBIAS": "constexpr", "SOFTPLUS": "constexpr",
            "WRITE_CKPT": "constexpr", "IS_F64": "constexpr", "HAS_H0": "constexpr",
            "BLOCK_D": "constexpr", "BLOCK_N": "constexpr", "BLOCK_T": "constexpr"}


FWD_BLOCK_D, BLOCK_T, NUM_WARPS = 2, 64, 4


def _spec(dtype, label, **kw):
    flags = dict(HAS_D=True, HAS_Z=True, HAS_DBIAS=True, SOFTPLUS=True, WRITE_CKPT=True, IS_F64=dtype == "fp64",
                 HAS_H0=True,
                 BLOCK_D=FWD_BLOCK_D, BLOCK_N=16, BLOCK_T=BLOCK_T)
    flags.update(kw)
    return AotSpec(module=__name__, name="_ss_fwd_kernel", signature=_sig(dtype, True), constexprs=flags,
                   num_warps=NUM_WARPS, label=label)


AOT_SPECS = [
    _spec("fp32", "fp32_full"),
    _spec("bf16", "bf16_full"),
    _spec("fp32", "fp32_plain_nockpt", HAS_D=False, HAS_Z=False, HAS_DBIAS=False, SOFTPLUS=False, WRITE_CKPT=False,
          HAS_H0=False),
]
