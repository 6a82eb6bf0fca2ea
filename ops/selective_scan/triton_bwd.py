"""Selective-scan backward Triton kernel: reverse scan by index arithmetic, states recomputed per tile.

One program per (block of BLOCK_D channels, batch row), walking the tiles of BLOCK_T steps from
the last to the first. For a tile starting at t0:

1. Reverse scan of the state gradient, g_t = dy_t C_t + a_{t+1} g_{t+1} (+ dlast at a sequence end,
   a_{t+1} = 0 when t+1 starts a sequence, START_ID as in ``triton_fwd``), with dy_t = dout_t silu(z_t). The tile is *loaded in
   reversed order*, j -> t = t0 + BLOCK_T - 1 - j, so this is a forward ``tl.associative_scan``
   of the pairs (a_{t+1}, dy_t C_t) with the carry g_{t0 + BLOCK_T} from the later tile
   (never ``associative_scan(reverse=True)``). g goes back to time order through a per-program
   scratch tile (store at j, load at BLOCK_T - 1 - j): cheap on GPU (L1/L2) and, unlike
   ``tl.flip``'s xor-reductions, fast in the CPU interpreter.
2. Recompute h_t in the tile from the checkpoint written by the forward (same scan as forward).
3. With a_t h_{t-1} = h_t - dl_t u_t B_t (a_t h0_i at the start of sequence i):
       ddl_t = sum_n g (a h_{t-1} A + B u);  dA += sum_t g a h_{t-1} dl;  du_t = dl (g . B) + D dy
       dB_t += sum_d g dl u;  dC_t += sum_d dy h_t;  dD += sum_t dy u;  dz = dout ypre silu'(z)
       ddelta = ddl * sigmoid(delta + bias) under softplus.
   dB, dC (shared by the channels of a group) are accumulated with atomic adds; dA, dD are
   written per (batch, channel) and summed over batch by the launcher.
4. With initial states (HAS_H0), d h0_i = a_t g_t at the start t of sequence i (DH0 zeroed by the
   launcher: an empty sequence has no start).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_aot import AotSpec
from .triton_fwd import BLOCK_T, NUM_WARPS, _acc, _combine, _load_channel_vec, _load_delta, _seq_states


@triton.jit
def _ss_bwd_kernel(
    U, DELTA, A, B, C, D, Z, DBIAS, H0, START_ID, END_ID, CKPT, DOUT, DLAST,
    DU, DDELTA, DA, DB, DC, DD, DZ, DH0,  # DU, DDELTA, DZ (b, dim, L); DA (b, dim, N); H0, DH0 (b, nseq, dim, N); DB, DC like B, C (fp32/fp64); DD (b, dim)
    SCRATCH,                             # (n_programs, BLOCK_D, BLOCK_N, BLOCK_T) fp32/fp64: time-reversal of g
    dim, L, N, GB, GC, nseq, n_tiles,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, HAS_DLAST: tl.constexpr,
    SOFTPLUS: tl.constexpr, IS_F64: tl.constexpr, HAS_H0: tl.constexpr,
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
    row = (pid_b * dim + offs_d) * L
    gB_off = (pid_b * GB + d0 // (dim // GB)) * N * L
    gC_off = (pid_b * GC + d0 // (dim // GC)) * N * L
    ck_row = (pid_b * dim + offs_d) * n_tiles
    pid = pid_b * tl.num_programs(0) + pid_d
    scr = SCRATCH + pid * (BLOCK_D * BLOCK_N * BLOCK_T) + (tl.arange(0, BLOCK_D)[:, None, None] * BLOCK_N
                                                          + offs_n[None, :, None]) * BLOCK_T
    g = tl.zeros((BLOCK_D, BLOCK_N), dtype=A_.dtype)          # g_{t0 + BLOCK_T}: gradient entering from the later tile
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=A_.dtype)
    dD_acc = tl.sum(tl.zeros((BLOCK_D, BLOCK_N), dtype=A_.dtype), axis=1)
    for it in range(0, n_tiles):
        tile = n_tiles - 1 - it
        t0 = tile * BLOCK_T
        # ---- 1. reverse scan of g, tile loaded in reversed time order
        tr = t0 + BLOCK_T - 1 - jj
        m_r = tr < L
        tn = tr + 1
        m_n = tn < L
        md_r = mask_d[:, None] & m_r[None, :]
        offs_r = row[:, None] + tr[None, :]
        _, dl_next = _load_delta(DELTA, row[:, None] + tn[None, :], mask_d[:, None] & m_n[None, :], bias, SOFTPLUS, IS_F64)
        a_next = tl.exp(dl_next[:, None, :] * A_[:, :, None])                 # a_{t+1}, (BD, BN, BT)
        sid_next = tl.load(START_ID + tn, mask=m_n, other=0)
        a_next = tl.where((sid_next >= 0)[None, None, :], 0.0, a_next)
        a_next = tl.where(m_r[None, None, :], a_next, 1.0)
        dy_r = _acc(tl.load(DOUT + offs_r, mask=md_r, other=0.0), IS_F64)
        if HAS_Z:
            z_r = _acc(tl.load(Z + offs_r, mask=md_r, other=0.0), IS_F64)
            dy_r = dy_r * z_r * tl.sigmoid(z_r)
        C_r = _acc(tl.load(C + gC_off + offs_n[:, None] * L + tr[None, :], mask=mask_n[:, None] & m_r[None, :], other=0.0), IS_F64)
        c_r = dy_r[:, None, :] * C_r[None, :, :]
        if HAS_DLAST:
            e = tl.load(END_ID + tr, mask=m_r, other=-1)
            lp = DLAST + ((pid_b * nseq + e[None, None, :]) * dim + offs_d[:, None, None]) * N + offs_n[None, :, None]
            c_r += _acc(tl.load(lp, mask=(e >= 0)[None, None, :] & mask_dn[:, :, None], other=0.0), IS_F64)
        ga, gb = tl.associative_scan((a_next, c_r), 2, _combine)
        g_rev = ga * g[:, :, None] + gb
        g = tl.sum(tl.where((jj == BLOCK_T - 1)[None, None, :], g_rev, 0.0), axis=2)   # g_{t0}
        # back to time order (i -> t0 + i) through this program's scratch tile, by index arithmetic
        tl.store(scr + jj[None, None, :], g_rev)
        tl.debug_barrier()
        gs = tl.load(scr + (BLOCK_T - 1 - jj)[None, None, :])
        tl.debug_barrier()
        # ---- 2. recompute the tile's states from the checkpoint
        offs_t = t0 + jj
        mask_t = offs_t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        m_nt = mask_n[:, None] & mask_t[None, :]
        offs_dt = row[:, None] + offs_t[None, :]
        hck = _acc(tl.load(CKPT + (ck_row[:, None] + tile) * N + offs_n[None, :], mask=mask_dn, other=0.0), IS_F64)
        u = _acc(tl.load(U + offs_dt, mask=m_dt, other=0.0), IS_F64)
        raw, dl = _load_delta(DELTA, offs_dt, m_dt, bias, SOFTPLUS, IS_F64)
        sid = tl.load(START_ID + offs_t, mask=mask_t, other=-1)
        Bv = _acc(tl.load(B + gB_off + offs_n[:, None] * L + offs_t[None, :], mask=m_nt, other=0.0), IS_F64)
        Cv = _acc(tl.load(C + gC_off + offs_n[:, None] * L + offs_t[None, :], mask=m_nt, other=0.0), IS_F64)
        a = tl.exp(dl[:, None, :] * A_[:, :, None])
        dlu = dl * u
        bx = dlu[:, None, :] * Bv[None, :, :]
        bx_in = bx
        if HAS_H0:                                                             # a_t h0_i enters at a start
            bx_in = bx + a * _seq_states(H0, sid, pid_b, nseq, dim, N, offs_d, offs_n, mask_dn, IS_F64)
            at_start = (sid >= 0)[None, None, :] & mask_dn[:, :, None]
            hp = ((pid_b * nseq + sid[None, None, :]) * dim + offs_d[:, None, None]) * N + offs_n[None, :, None]
            tl.store(DH0 + hp, a * gs, mask=at_start)                         # d h0_i = a_t g_t
        a = tl.where((sid >= 0)[None, None, :], 0.0, a)
        a = tl.where(mask_t[None, None, :], a, 1.0)
        ac, bc = tl.associative_scan((a, bx_in), 2, _combine)
        hs = ac * hck[:, :, None] + bc                                         # h_t
        ah = tl.where(mask_t[None, None, :], hs - bx, 0.0)                     # a_t h_{t-1}
        # ---- 3. gradients
        dout = _acc(tl.load(DOUT + offs_dt, mask=m_dt, other=0.0), IS_F64)
        dy = dout
        if HAS_Z:
            zz = _acc(tl.load(Z + offs_dt, mask=m_dt, other=0.0), IS_F64)
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
            ypre = tl.sum(hs * Cv[None, :, :], axis=1) + Dv[:, None] * u
            tl.store(DZ + offs_dt, dout * ypre * sz * (1.0 + zz * (1.0 - sz)), mask=m_dt)
        ddl = tl.sum(gs * (ah * A_[:, :, None] + Bv[None, :, :] * u[:, None, :]), axis=1)   # (BD, BT)
        dA_acc += tl.sum(gs * ah * dl[:, None, :], axis=2)
        dD_acc += tl.sum(dy * u, axis=1)
        du = dl * tl.sum(gs * Bv[None, :, :], axis=1) + Dv[:, None] * dy
        tl.store(DU + offs_dt, du, mask=m_dt)
        if SOFTPLUS:
            ddl = ddl * tl.sigmoid(raw)
        tl.store(DDELTA + offs_dt, ddl, mask=m_dt)
        dBt = tl.sum(gs * dlu[:, None, :], axis=0)                             # (BN, BT), this block's channels
        dCt = tl.sum(hs * dy[:, None, :], axis=0)
        tl.atomic_add(DB + gB_off + offs_n[:, None] * L + offs_t[None, :], dBt, mask=m_nt)
        tl.atomic_add(DC + gC_off + offs_n[:, None] * L + offs_t[None, :], dCt, mask=m_nt)
    tl.store(DA + (pid_b * dim + offs_d[:, None]) * N + offs_n[None, :], dA_acc, mask=mask_dn)
    tl.store(DD + pid_b * dim + offs_d, dD_acc, mask=mask_d)


def _sig(dtype: str):
    p, acc = f"*{dtype}", "*fp64" if dtype == "fp64" else "*fp32"
    return {"U": p, "DELTA": p, "A": p, "B": p, "C": p, "D": p, "Z": p, "DBIAS": p, "H0": acc, "START_ID": "*i32",
            "END_ID": "*i32", "CKPT": acc, "DOUT": p, "DLAST": acc,
            "DU": acc, "DDELTA": acc, "DA": acc, "DB": acc, "DC": acc, "DD": acc, "DZ": acc, "DH0": acc, "SCRATCH": acc,
            "dim": "i32", "L": "i32", "N": "i32", "GB": "i32", "GC": "i32", "nseq": "i32", "n_tiles": "i32",
            "HAS_D": "constexpr", "HAS_Z": "constexpr", "HAS_DBIAS": "constexpr", "HAS_DLAST": "constexpr",
            "SOFTPLUS": "constexpr", "IS_F64": "constexpr", "HAS_H0": "constexpr",
            "BLOCK_D": "constexpr", "BLOCK_N": "constexpr", "BLOCK_T": "constexpr"}


BWD_BLOCK_D = 1


def _spec(dtype, label, **kw):
    flags = dict(HAS_D=True, HAS_Z=True, HAS_DBIAS=True, HAS_DLAST=True, SOFTPLUS=True, IS_F64=dtype == "fp64",
                 HAS_H0=True,
                 BLOCK_D=BWD_BLOCK_D, BLOCK_N=16, BLOCK_T=BLOCK_T)
    flags.update(kw)
    return AotSpec(module=__name__, name="_ss_bwd_kernel", signature=_sig(dtype), constexprs=flags,
                   num_warps=NUM_WARPS, label=label)


AOT_SPECS = [
    _spec("fp32", "fp32_full"),
    _spec("bf16", "bf16_full"),
    _spec("fp32", "fp32_plain", HAS_D=False, HAS_Z=False, HAS_DBIAS=False, HAS_DLAST=False, SOFTPLUS=False,
          HAS_H0=False),
]
