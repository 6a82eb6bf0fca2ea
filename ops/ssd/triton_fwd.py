"""Triton forward kernels of Mamba-2 SSD (chunked algorithm), on the padded chunk layout of layout.py.

With a_t = dt'_t A and s_i = a_0 + ... + a_i restarted at every chunk (in-chunk index i, j):

    _ssd_chunk_cumsum_fwd:  s = cumsum(dt' * A) per chunk                               (S, H, Lp)
    _ssd_chunk_state:       S_c = sum_j exp(s_{Q-1} - s_j) dt'_j x_j B_j^T              (S, Cs, H, P, N)
                            (with FROM_START: sum_j exp(s_j) X_j B_j^T, reused by the backward)
    _ssd_state_pass_fwd:    H_c = state entering chunk c; H_{c+1} = exp(s_{Q-1}) H_c + S_c,
                            H = initial state at a sequence start; final state after its last chunk
    _ssd_chunk_out_fwd:     Y_i = exp(s_i) H_c C_i + sum_{j<=i} exp(s_i - s_j) (C_i . B_j) dt'_j x_j

Layouts (contiguous): x, y (S, Lp, H, P); B, C (S, Lp, G, N); dt', s (S, H, Lp);
states, H_c (S, Cs, H, P, N); initial/final (n_seqs, H, P, N); chunk_seq (S, Cs) int32.
Every chunk is full (Lp = Cs * Q, Q >= 16), so only the P and N tiles need masks; tiles are at
least 16 wide for tl.dot. Accumulation in the dtype of the s buffer (float32, float64 for float64).
D, z gating and dt preprocessing are elementwise and live in the torch glue (triton_op.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_aot import AotSpec


@triton.jit
def _causal_decay(s_late, s_early, late_idx, early_idx):
    """exp(s_late - s_early) where late_idx >= early_idx, else 0; the difference is masked before exp."""
    d = tl.where(late_idx >= early_idx, s_late - s_early, float("-inf"))
    return tl.exp(d)


@triton.jit
def _load_rows(ptr, rows, cols, row_stride, ncols, cdt):
    """Tile ptr[rows, cols] (rows always valid, cols < ncols) cast to cdt."""
    return tl.load(ptr + rows[:, None].to(tl.int64) * row_stride + cols[None, :],
                   mask=cols[None, :] < ncols, other=0.0).to(cdt)


@triton.jit
def _load_tile(ptr, rows, cols, nrows, ncols, row_stride, cdt):
    """Tile ptr[rows, cols] (rows < nrows, cols < ncols) cast to cdt, zero outside: a state tile
    (P, N) read as (BP, BN), whose rows past P would belong to the next head (or lie past the end)."""
    return tl.load(ptr + rows[:, None].to(tl.int64) * row_stride + cols[None, :],
                   mask=(rows[:, None] < nrows) & (cols[None, :] < ncols), other=0.0).to(cdt)


@triton.jit
def _ssd_chunk_cumsum_fwd(dt_ptr, A_ptr, acum_ptr, H, Lp, Q: tl.constexpr):
    c = tl.program_id(0)
    sh = tl.program_id(1)                                    # s * H + h
    offs = sh.to(tl.int64) * Lp + c * Q + tl.arange(0, Q)
    cdt = acum_ptr.dtype.element_ty
    a = tl.load(dt_ptr + offs).to(cdt) * tl.load(A_ptr + sh % H).to(cdt)
    tl.store(acum_ptr + offs, tl.cumsum(a, 0))


@triton.jit
def _ssd_chunk_state(x_ptr, b_ptr, dt_ptr, acum_ptr, out_ptr, H, G, Lp, P, N,
                     Q: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                     FROM_START: tl.constexpr, PREC: tl.constexpr):
    # out[s, c, h] (P, N) = sum_j w_j X_j^T Bm_j over the chunk's rows j
    pid_pn = tl.program_id(0)
    sc = tl.program_id(1)
    h = tl.program_id(2)
    Cs = Lp // Q
    s = sc // Cs
    c = sc % Cs
    npb = tl.cdiv(N, BN)
    p = (pid_pn // npb) * BP + tl.arange(0, BP)
    n = (pid_pn % npb) * BN + tl.arange(0, BN)
    g = h // (H // G)
    cdt = acum_ptr.dtype.element_ty
    x_base = x_ptr + (s.to(tl.int64) * Lp * H + h) * P
    b_base = b_ptr + (s.to(tl.int64) * Lp * G + g) * N
    a_base = (s.to(tl.int64) * H + h) * Lp
    s_last = tl.load(acum_ptr + a_base + c * Q + Q - 1)
    acc = tl.zeros((BP, BN), dtype=cdt)
    for k0 in range(0, Q, BK):
        t = c * Q + k0 + tl.arange(0, BK)
        xs = _load_rows(x_base, t, p, H * P, P, cdt)                              # (BK, BP)
        bs = _load_rows(b_base, t, n, G * N, N, cdt)                              # (BK, BN)
        st = tl.load(acum_ptr + a_base + t)
        if FROM_START:
            w = tl.exp(st)
        else:
            w = tl.exp(s_last - st) * tl.load(dt_ptr + a_base + t).to(cdt)
        acc += tl.dot(tl.trans(xs * w[:, None]), bs, input_precision=PREC)
    out = out_ptr + (sc.to(tl.int64) * H + h) * P * N
    tl.store(out + p[:, None] * N + n[None, :], acc, mask=(p[:, None] < P) & (n[None, :] < N))


@triton.jit
def _ssd_state_pass_fwd(states_ptr, acum_ptr, init_ptr, seq_ptr, hin_ptr, final_ptr, H, Lp, PN,
                        Q: tl.constexpr, BLOCK: tl.constexpr, HAS_INIT: tl.constexpr):
    pid = tl.program_id(0)
    s = tl.program_id(1)
    h = tl.program_id(2)
    Cs = Lp // Q
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    cdt = hin_ptr.dtype.element_ty
    state = tl.zeros((BLOCK,), dtype=cdt)
    row = seq_ptr + s * (Cs + 2) + 1                          # chunk_seq with -1 borders
    for c in range(Cs):
        seq = tl.load(row + c)
        prev = tl.load(row + c - 1)
        nxt = tl.load(row + c + 1)
        if HAS_INIT:
            fresh = tl.load(init_ptr + (seq.to(tl.int64) * H + h) * PN + offs, mask=m, other=0.0).to(cdt)
        else:
            fresh = tl.zeros((BLOCK,), dtype=cdt)
        state = tl.where(seq != prev, fresh, state)
        base = ((s * Cs + c).to(tl.int64) * H + h) * PN
        tl.store(hin_ptr + base + offs, state, mask=m)
        decay = tl.exp(tl.load(acum_ptr + (s.to(tl.int64) * H + h) * Lp + c * Q + Q - 1))
        state = decay * state + tl.load(states_ptr + base + offs, mask=m, other=0.0)
        tl.store(final_ptr + (seq.to(tl.int64) * H + h) * PN + offs, state, mask=m & (offs * 0 + nxt != seq))


@triton.jit
def _ssd_chunk_out_fwd(x_ptr, b_ptr, c_ptr, dt_ptr, acum_ptr, hin_ptr, y_ptr, H, G, Lp, P, N,
                       Q: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                       PREC: tl.constexpr):
    # y rows i of one chunk and head: inter-chunk exp(s_i) H_c C_i + causal intra-chunk part
    pid_mp = tl.program_id(0)
    sc = tl.program_id(1)
    h = tl.program_id(2)
    Cs = Lp // Q
    s = sc // Cs
    c = sc % Cs
    npb = tl.cdiv(P, BP)
    mb = pid_mp // npb
    p = (pid_mp % npb) * BP + tl.arange(0, BP)
    g = h // (H // G)
    cdt = acum_ptr.dtype.element_ty
    x_base = x_ptr + (s.to(tl.int64) * Lp * H + h) * P
    b_base = b_ptr + (s.to(tl.int64) * Lp * G + g) * N
    c_base = c_ptr + (s.to(tl.int64) * Lp * G + g) * N
    a_base = (s.to(tl.int64) * H + h) * Lp
    h_base = hin_ptr + (sc.to(tl.int64) * H + h) * P * N
    i_loc = mb * BM + tl.arange(0, BM)
    i = c * Q + i_loc
    s_i = tl.load(acum_ptr + a_base + i)
    acc = tl.zeros((BM, BP), dtype=cdt)
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        ci = _load_rows(c_base, i, n, G * N, N, cdt)                              # (BM, BN)
        hv = _load_tile(h_base, p, n, P, N, N, cdt)                               # (BP, BN) = H_c[p, n]
        acc += tl.dot(ci, tl.trans(hv), input_precision=PREC)
    acc = acc * tl.exp(s_i)[:, None]
    for k0 in range(0, (mb + 1) * BM, BM):
        j_loc = k0 + tl.arange(0, BM)
        j = c * Q + j_loc
        cb = tl.zeros((BM, BM), dtype=cdt)
        for n0 in range(0, N, BN):
            n = n0 + tl.arange(0, BN)
            ci = _load_rows(c_base, i, n, G * N, N, cdt)
            bj = _load_rows(b_base, j, n, G * N, N, cdt)
            cb += tl.dot(ci, tl.trans(bj), input_precision=PREC)
        s_j = tl.load(acum_ptr + a_base + j)
        dt_j = tl.load(dt_ptr + a_base + j).to(cdt)
        w = cb * _causal_decay(s_i[:, None], s_j[None, :], i_loc[:, None], j_loc[None, :]) * dt_j[None, :]
        xj = _load_rows(x_base, j, p, H * P, P, cdt)                              # (BM, BP)
        acc += tl.dot(w, xj, input_precision=PREC)
    y = y_ptr + (s.to(tl.int64) * Lp * H + h) * P
    tl.store(y + i[:, None].to(tl.int64) * H * P + p[None, :], acc, mask=p[None, :] < P)


# Row tile (positions of a chunk) of the forward's matmul kernels per target. sm_90 builds are clean
# at 64; on sm_80 (and other pre-Hopper targets, same 255-register limit) 64 spills with tf32x3
# dots at 8 warps (chunk_out 824 B, chunk_state from the start 16 B), 32 does not.
ROW_TILE = {90: 64, 80: 32}


def row_tile(cap: tuple[int, int]) -> int:
    """Largest row tile for a device of compute capability ``cap``."""
    return ROW_TILE[90] if cap >= (9, 0) else ROW_TILE[80]


# Representative instantiations: Mamba-2 130M layer (H 24, P 64, N 128, chunk 256), float32, with
# each target's row tile.
_P32 = "*fp32"
_STATE_SIG = {"x_ptr": _P32, "b_ptr": _P32, "dt_ptr": _P32, "acum_ptr": _P32, "out_ptr": _P32,
              "H": "i32", "G": "i32", "Lp": "i32", "P": "i32", "N": "i32", "Q": "constexpr",
              "BK": "constexpr", "BP": "constexpr", "BN": "constexpr", "FROM_START": "constexpr",
              "PREC": "constexpr"}
_OUT_SIG = {"x_ptr": _P32, "b_ptr": _P32, "c_ptr": _P32, "dt_ptr": _P32, "acum_ptr": _P32,
            "hin_ptr": _P32, "y_ptr": _P32, "H": "i32", "G": "i32", "Lp": "i32", "P": "i32", "N": "i32",
            "Q": "constexpr", "BM": "constexpr", "BP": "constexpr", "BN": "constexpr", "PREC": "constexpr"}
AOT_SPECS = [
    AotSpec(module=__name__, name="_ssd_chunk_cumsum_fwd",
            signature={"dt_ptr": _P32, "A_ptr": _P32, "acum_ptr": _P32, "H": "i32", "Lp": "i32", "Q": "constexpr"},
            constexprs={"Q": 256}),
    AotSpec(module=__name__, name="_ssd_state_pass_fwd",
            signature={"states_ptr": _P32, "acum_ptr": _P32, "init_ptr": _P32, "seq_ptr": "*i32", "hin_ptr": _P32,
                       "final_ptr": _P32, "H": "i32", "Lp": "i32", "PN": "i32", "Q": "constexpr",
                       "BLOCK": "constexpr", "HAS_INIT": "constexpr"},
            constexprs={"Q": 256, "BLOCK": 1024, "HAS_INIT": True}),
    *[spec for cap, bm in ROW_TILE.items() for spec in (
        *[AotSpec(module=__name__, name="_ssd_chunk_state", signature=_STATE_SIG,
                  constexprs={"Q": 256, "BK": bm, "BP": 64, "BN": 32, "FROM_START": fs, "PREC": "tf32x3"},
                  num_warps=8, num_stages=2, label=f"sm{cap}" + (",from_start" if fs else ""), caps=(cap,))
          for fs in (False, True)],
        AotSpec(module=__name__, name="_ssd_chunk_out_fwd", signature=_OUT_SIG,
                constexprs={"Q": 256, "BM": bm, "BP": 64, "BN": 32, "PREC": "tf32x3"},
                num_warps=8, num_stages=2, label=f"sm{cap}", caps=(cap,)))],
]
