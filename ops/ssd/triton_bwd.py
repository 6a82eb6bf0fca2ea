"""Triton backward kernels of Mamba-2 SSD, mirroring triton_fwd.py (same layouts and notation).

With dY the gradient of the SSM output, H_c the state entering chunk c, dS_c the gradient of the
chunk's own state S_c (= gradient of the state after the chunk), s the in-chunk cumsum of dt' A:

    _ssd_state_pass_bwd: reverse pass over chunks, g = gradient of the state after chunk c:
        g = d final at a sequence's last chunk; dS_c = g;
        ds_{Q-1} += exp(s_{Q-1}) <g, H_c>  (partial sums per block of P*N);
        g <- dH_c^out + exp(s_{Q-1}) g, stored as d initial at the sequence's first chunk
        (dH_c^out = sum_i exp(s_i) dY_i C_i^T comes from _ssd_chunk_state with FROM_START)
    _ssd_chunk_dx_bwd:   u_j = sum_{i>=j} exp(s_i - s_j) (B_j . C_i) dY_i,  v_j = exp(s_{Q-1} - s_j) dS B_j
        dx_j = dt'_j (u_j + v_j);  gdt_j = x_j . (u_j + v_j) (= d dt'_j);  gst_j = x_j . v_j
    _ssd_chunk_dbc_bwd:  per group, summed over its heads:
        dB_j = sum_{i>=j} exp(s_i - s_j) dt'_j (x_j . dY_i) C_i + exp(s_{Q-1} - s_j) dt'_j dS^T x_j
        dC_i = sum_{j<=i} exp(s_i - s_j) dt'_j (dY_i . x_j) B_j + exp(s_i) H_c dY_i
The rest (ds -> da by a reverse in-chunk cumsum, dA, dt', D and z) is O(L H) torch in triton_op.py.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_aot import AotSpec
from .triton_fwd import _causal_decay, _load_rows, _load_tile


@triton.jit
def _ssd_state_pass_bwd(dhout_ptr, hin_ptr, acum_ptr, dfinal_ptr, seq_ptr, dstates_ptr, dinit_ptr, ddecay_ptr,
                        H, Lp, PN, Q: tl.constexpr, BLOCK: tl.constexpr, HAS_DFINAL: tl.constexpr):
    pid = tl.program_id(0)
    s = tl.program_id(1)
    h = tl.program_id(2)
    nblk = tl.num_programs(0)
    Cs = Lp // Q
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    cdt = dstates_ptr.dtype.element_ty
    g = tl.zeros((BLOCK,), dtype=cdt)
    row = seq_ptr + s * (Cs + 2) + 1                          # chunk_seq with -1 borders
    for cc in range(Cs):
        c = Cs - 1 - cc
        seq = tl.load(row + c)
        nxt = tl.load(row + c + 1)
        prv = tl.load(row + c - 1)
        if HAS_DFINAL:
            dfin = tl.load(dfinal_ptr + (seq.to(tl.int64) * H + h) * PN + offs, mask=m, other=0.0).to(cdt)
        else:
            dfin = tl.zeros((BLOCK,), dtype=cdt)
        g = tl.where(nxt != seq, dfin, g)
        base = ((s * Cs + c).to(tl.int64) * H + h) * PN
        tl.store(dstates_ptr + base + offs, g, mask=m)
        hv = tl.load(hin_ptr + base + offs, mask=m, other=0.0)
        decay = tl.exp(tl.load(acum_ptr + (s.to(tl.int64) * H + h) * Lp + c * Q + Q - 1))
        tl.store(ddecay_ptr + ((s * Cs + c).to(tl.int64) * H + h) * nblk + pid, decay * tl.sum(g * hv, 0))
        g = tl.load(dhout_ptr + base + offs, mask=m, other=0.0) + decay * g
        tl.store(dinit_ptr + (seq.to(tl.int64) * H + h) * PN + offs, g, mask=m & (offs * 0 + prv != seq))


@triton.jit
def _ssd_chunk_dx_bwd(x_ptr, b_ptr, c_ptr, dt_ptr, acum_ptr, dy_ptr, dstates_ptr, dx_ptr, gdt_ptr, gst_ptr,
                      H, G, Lp, P, N, Q: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                      PREC: tl.constexpr):
    # rows j (BM of them) of one chunk and head, all of P in one tile (BP >= P). u, v, the (j, i)
    # tile B_j C_i^T and the tf32x3 operand splits are live at once: BM 64 spills on sm_80.
    mb = tl.program_id(0)
    sc = tl.program_id(1)
    h = tl.program_id(2)
    Cs = Lp // Q
    s = sc // Cs
    c = sc % Cs
    g = h // (H // G)
    cdt = acum_ptr.dtype.element_ty
    x_base = x_ptr + (s.to(tl.int64) * Lp * H + h) * P
    dy_base = dy_ptr + (s.to(tl.int64) * Lp * H + h) * P
    b_base = b_ptr + (s.to(tl.int64) * Lp * G + g) * N
    c_base = c_ptr + (s.to(tl.int64) * Lp * G + g) * N
    a_base = (s.to(tl.int64) * H + h) * Lp
    ds_base = dstates_ptr + (sc.to(tl.int64) * H + h) * P * N
    p = tl.arange(0, BP)
    j_loc = mb * BM + tl.arange(0, BM)
    j = c * Q + j_loc
    s_j = tl.load(acum_ptr + a_base + j)
    s_last = tl.load(acum_ptr + a_base + c * Q + Q - 1)
    v = tl.zeros((BM, BP), dtype=cdt)
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        bj = _load_rows(b_base, j, n, G * N, N, cdt)                              # (BM, BN)
        dsT = _load_tile(ds_base, p, n, P, N, N, cdt)                             # (BP, BN) = dS[p, n]
        v += tl.dot(bj, tl.trans(dsT), input_precision=PREC)
    v = v * tl.exp(s_last - s_j)[:, None]
    u = tl.zeros((BM, BP), dtype=cdt)
    for k0 in range(mb * BM, Q, BM):
        i_loc = k0 + tl.arange(0, BM)
        i = c * Q + i_loc
        bc = tl.zeros((BM, BM), dtype=cdt)
        for n0 in range(0, N, BN):
            n = n0 + tl.arange(0, BN)
            bj = _load_rows(b_base, j, n, G * N, N, cdt)
            ci = _load_rows(c_base, i, n, G * N, N, cdt)
            bc += tl.dot(bj, tl.trans(ci), input_precision=PREC)                  # (j, i)
        s_i = tl.load(acum_ptr + a_base + i)
        w = bc * _causal_decay(s_i[None, :], s_j[:, None], i_loc[None, :], j_loc[:, None])
        dyi = _load_rows(dy_base, i, p, H * P, P, cdt)                            # (BM, BP)
        u += tl.dot(w, dyi, input_precision=PREC)
    tot = u + v
    xj = _load_rows(x_base, j, p, H * P, P, cdt)
    dt_j = tl.load(dt_ptr + a_base + j).to(cdt)
    dx = dx_ptr + (s.to(tl.int64) * Lp * H + h) * P
    tl.store(dx + j[:, None].to(tl.int64) * H * P + p[None, :], tot * dt_j[:, None], mask=p[None, :] < P)
    tl.store(gdt_ptr + a_base + j, tl.sum(xj * tot, 1))
    tl.store(gst_ptr + a_base + j, tl.sum(xj * v, 1))


@triton.jit
def _ssd_chunk_dbc_bwd(x_ptr, dy_ptr, other_ptr, dt_ptr, acum_ptr, st_ptr, out_ptr, H, G, Lp, P, N,
                       Q: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                       IS_DB: tl.constexpr, PREC: tl.constexpr):
    # IS_DB: out = dB (rows j), other = C, st = dS.  else: out = dC (rows i), other = B, st = H_c.
    # The x . dY products are summed over P in slices of BP (< P allowed): operand tiles (BM, BP)
    # loaded inside the loops rather than (BM, P) ones held across them keep this in registers.
    pid_mn = tl.program_id(0)
    sc = tl.program_id(1)
    g = tl.program_id(2)
    Cs = Lp // Q
    s = sc // Cs
    c = sc % Cs
    R = H // G
    nnb = tl.cdiv(N, BN)
    mb = pid_mn // nnb
    n = (pid_mn % nnb) * BN + tl.arange(0, BN)
    cdt = acum_ptr.dtype.element_ty
    r_loc = mb * BM + tl.arange(0, BM)
    rows = c * Q + r_loc
    o_base = other_ptr + (s.to(tl.int64) * Lp * G + g) * N
    if IS_DB:
        lo = mb * BM
        hi = Q
    else:
        lo = 0
        hi = (mb + 1) * BM
    acc = tl.zeros((BM, BN), dtype=cdt)
    for hr in range(R):
        h = g * R + hr
        x_base = x_ptr + (s.to(tl.int64) * Lp * H + h) * P
        dy_base = dy_ptr + (s.to(tl.int64) * Lp * H + h) * P
        if IS_DB:   # the row operand (x_j / dY_i) and the column one (dY_i / x_j)
            r_base, k_base = x_base, dy_base
        else:
            r_base, k_base = dy_base, x_base
        a_base = (s.to(tl.int64) * H + h) * Lp
        st_base = st_ptr + (sc.to(tl.int64) * H + h) * P * N
        s_r = tl.load(acum_ptr + a_base + rows)
        dt_r = tl.load(dt_ptr + a_base + rows).to(cdt)
        rst = tl.zeros((BM, BN), dtype=cdt)                                       # x_j dS or dY_i H_c
        for p0 in range(0, P, BP):
            p = p0 + tl.arange(0, BP)
            st = _load_tile(st_base, p, n, P, N, N, cdt)                          # (BP, BN) rows p
            rst += tl.dot(_load_rows(r_base, rows, p, H * P, P, cdt), st, input_precision=PREC)
        if IS_DB:
            s_last = tl.load(acum_ptr + a_base + c * Q + Q - 1)
            acc += (tl.exp(s_last - s_r) * dt_r)[:, None] * rst
        else:
            acc += tl.exp(s_r)[:, None] * rst
        for k0 in range(lo, hi, BM):
            k_loc = k0 + tl.arange(0, BM)
            cols = c * Q + k_loc
            s_k = tl.load(acum_ptr + a_base + cols)
            w = tl.zeros((BM, BM), dtype=cdt)                                     # (rows, cols): x_j . dY_i
            for p0 in range(0, P, BP):
                p = p0 + tl.arange(0, BP)
                rp = _load_rows(r_base, rows, p, H * P, P, cdt)                   # (BM, BP)
                kp = _load_rows(k_base, cols, p, H * P, P, cdt)                   # (BM, BP)
                w += tl.dot(rp, tl.trans(kp), input_precision=PREC)
            if IS_DB:   # rows j, cols i: (x_j . dY_i) exp(s_i - s_j) dt'_j
                w = w * _causal_decay(s_k[None, :], s_r[:, None], k_loc[None, :], r_loc[:, None]) * dt_r[:, None]
            else:       # rows i, cols j: (dY_i . x_j) exp(s_i - s_j) dt'_j
                dt_k = tl.load(dt_ptr + a_base + cols).to(cdt)
                w = w * _causal_decay(s_r[:, None], s_k[None, :], r_loc[:, None], k_loc[None, :]) * dt_k[None, :]
            ok = _load_rows(o_base, cols, n, G * N, N, cdt)                       # (BM, BN)
            acc += tl.dot(w, ok, input_precision=PREC)
    out = out_ptr + (s.to(tl.int64) * Lp * G + g) * N
    tl.store(out + rows[:, None].to(tl.int64) * G * N + n[None, :], acc, mask=n[None, :] < N)


_P32 = "*fp32"
_DIMS = {"H": "i32", "G": "i32", "Lp": "i32", "P": "i32", "N": "i32"}
_BLK = {"Q": "constexpr", "BM": "constexpr", "BP": "constexpr", "BN": "constexpr"}
AOT_SPECS = [
    AotSpec(module=__name__, name="_ssd_state_pass_bwd",
            signature={"dhout_ptr": _P32, "hin_ptr": _P32, "acum_ptr": _P32, "dfinal_ptr": _P32, "seq_ptr": "*i32",
                       "dstates_ptr": _P32, "dinit_ptr": _P32, "ddecay_ptr": _P32, "H": "i32", "Lp": "i32",
                       "PN": "i32", "Q": "constexpr", "BLOCK": "constexpr", "HAS_DFINAL": "constexpr"},
            constexprs={"Q": 256, "BLOCK": 1024, "HAS_DFINAL": True}),
    AotSpec(module=__name__, name="_ssd_chunk_dx_bwd",
            signature={"x_ptr": _P32, "b_ptr": _P32, "c_ptr": _P32, "dt_ptr": _P32, "acum_ptr": _P32, "dy_ptr": _P32,
                       "dstates_ptr": _P32, "dx_ptr": _P32, "gdt_ptr": _P32, "gst_ptr": _P32, **_DIMS, **_BLK,
                       "PREC": "constexpr"},
            constexprs={"Q": 256, "BM": 32, "BP": 64, "BN": 32, "PREC": "tf32x3"},
            num_warps=8, num_stages=2),
    *[AotSpec(module=__name__, name="_ssd_chunk_dbc_bwd",
              signature={"x_ptr": _P32, "dy_ptr": _P32, "other_ptr": _P32, "dt_ptr": _P32, "acum_ptr": _P32,
                         "st_ptr": _P32, "out_ptr": _P32, **_DIMS, **_BLK, "IS_DB": "constexpr", "PREC": "constexpr"},
              constexprs={"Q": 256, "BM": 32, "BP": 16, "BN": 32, "IS_DB": is_db, "PREC": "tf32x3"},
            num_warps=8, num_stages=2,
              label="dB" if is_db else "dC")
      for is_db in (True, False)],
]
