"""Chunked retention in Triton: forward (chunk_h, chunk_o), backward (chunk_dh, chunk_dqk, chunk_o).

Equations (see cpu_chunk.py for the derivation), chunk length BT, in-chunk index j, L_i the length
of chunk i, gamma = gamma_h, Q scaled by ``scale``, H_i the state before chunk i:

    chunk_h:    H_{i+1} = gamma^{L_i} H_i + K_[i]^T (V_[i] * gamma^{L_i-1-j})
    chunk_o:    O_[i]   = (Q_[i] * gamma^{j+1}) H_i + (Q_[i] K_[i]^T * D) V_[i]
    chunk_dh:   dH_i    = gamma^{L_i} dH_{i+1} + (Q_[i] * gamma^{j+1})^T dO_[i]   (i = N-1..0)
    chunk_dqk:  dQ_[i] = scale [ (dO_[i] H_i^T) * gamma^{j+1} + (dO_[i] V_[i]^T * D) K_[i] ]
                dK_[i] = (V_[i] dH_{i+1}^T) * gamma^{L_i-1-j} + (dO_[i] V_[i]^T * D)^T Q_[i]
    chunk_o DV: dV_[i] = (K_[i] dH_{i+1}) * gamma^{L_i-1-j} + (Q_[i] K_[i]^T * D)^T dO_[i]

Organisation: chunk_h and chunk_dh run one program per (K block, V block, batch*head) with a
sequential loop over chunks (the reverse one by index arithmetic), writing the state at every
chunk boundary (B*H, N, K, V); chunk_o runs one program per (V block, chunk, batch*head), looping
over K blocks, and with DV=True the same kernel computes dV (K and Q swap roles, dH_{i+1} and dO
stand in for H_i and V, D is transposed); chunk_dqk one per (K block, chunk, batch*head), looping
over V blocks. All accumulation is float32 (float64 for float64 inputs); every power of gamma has a
non-negative exponent.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_aot import AotSpec
from .common import acc_dtype, log_decay
from .triton_common import load_rows, load_rows_t, tile

__all__ = ["chunk_fwd", "chunk_bwd", "parallel_fwd", "parallel_bwd", "AOT_SPECS"]


@triton.jit
def _decay(lg, n, m):
    """gamma^(n-m) where n >= m, else 0 (exp(-inf)); n, m broadcastable index tensors."""
    return tl.exp(tl.where(n >= m, (n - m).to(lg.dtype) * lg, float("-inf")))


@triton.jit
def _tail_decay(lg, L, BT: tl.constexpr):
    """(BT,): gamma^(L-1-j) for the L rows of a chunk, 0 past them."""
    j = tl.arange(0, BT)
    return tl.exp(tl.where(j < L, (L - 1 - j).to(lg.dtype) * lg, float("-inf")))


@triton.jit
def _chunk_h_fwd_kernel(k, v, h0, ht, hs, log_gamma, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                        NT, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        USE_H0: tl.constexpr, STORE_HT: tl.constexpr, DOT: tl.constexpr):
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    lg = tl.load(log_gamma + i_h)
    acc_ty = lg.dtype
    rk = i_k * BK + tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    kv_off = rk[:, None] * V + rv[None, :]
    kv_mask = (rk[:, None] < K) & (rv[None, :] < V)
    k_base = k + (i_b * T * H + i_h) * K
    v_base = v + (i_b * T * H + i_h) * V
    state = tl.zeros([BK, BV], dtype=acc_ty)                                  # H_0 (BK, BV)
    if USE_H0:
        state += tl.load(h0 + i_bh * K * V + kv_off, mask=kv_mask, other=0.0).to(acc_ty)
    for i_t in range(NT):
        tl.store(hs + (i_bh * NT + i_t) * K * V + kv_off, state.to(hs.dtype.element_ty), mask=kv_mask)
        L = tl.minimum(BT, T - i_t * BT)
        kt = load_rows_t(k_base, i_t * BT, T, H * K, i_k * BK, K, BT, BK)      # (BK, BT)
        vt = load_rows(v_base, i_t * BT, T, H * V, i_v * BV, V, BT, BV)        # (BT, BV)
        vt = (vt.to(acc_ty) * _tail_decay(lg, L, BT)[:, None]).to(kt.dtype)
        state = state * tl.exp(L.to(acc_ty) * lg) + tl.dot(kt, vt, input_precision=DOT, out_dtype=acc_ty)
    if STORE_HT:
        tl.store(ht + i_bh * K * V + kv_off, state.to(ht.dtype.element_ty), mask=kv_mask)


@triton.jit
def _chunk_o_kernel(a, b, x, hs, o, log_gamma, scale, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                    NT, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
                    DV: tl.constexpr):
    """O_[i] (a, b, x, hs = q, k, v, hs) or, with DV, dV_[i] (a, b, x, hs = k, q, do, dhs):

        O_[i]  = scale [ (A * gamma^{j+1}) S + (A B^T * D) X ]
        dV_[i] = (A * gamma^{L_i-1-j}) S + scale (A B^T * D^T) X
    with A, B the chunk's (BT, K) rows, X its (BT, V) rows, S the stored (K, V) state of the chunk.
    """
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    lg = tl.load(log_gamma + i_h)
    acc_ty = lg.dtype
    a_base = a + (i_b * T * H + i_h) * K
    b_base = b + (i_b * T * H + i_h) * K
    x_base = x + (i_b * T * H + i_h) * V
    rv = i_v * BV + tl.arange(0, BV)
    acc = tl.zeros([BT, BV], dtype=acc_ty)                                    # A S
    s = tl.zeros([BT, BT], dtype=acc_ty)                                      # A B^T
    for i_k in range(tl.cdiv(K, BK)):
        rk = i_k * BK + tl.arange(0, BK)
        at = load_rows(a_base, i_t * BT, T, H * K, i_k * BK, K, BT, BK)        # (BT, BK)
        bt = load_rows_t(b_base, i_t * BT, T, H * K, i_k * BK, K, BT, BK)      # (BK, BT)
        h = tl.load(hs + (i_bh * NT + i_t) * K * V + rk[:, None] * V + rv[None, :],
                    mask=(rk[:, None] < K) & (rv[None, :] < V), other=0.0)   # (BK, BV)
        acc += tl.dot(at, h.to(at.dtype), input_precision=DOT, out_dtype=acc_ty)
        s += tl.dot(at, bt, input_precision=DOT, out_dtype=acc_ty)
    j = tl.arange(0, BT)
    xt = load_rows(x_base, i_t * BT, T, H * V, i_v * BV, V, BT, BV)            # (BT, BV)
    if DV:
        s = s * _decay(lg, j[None, :], j[:, None]) * scale
        out = acc * _tail_decay(lg, tl.minimum(BT, T - i_t * BT), BT)[:, None]
        out += tl.dot(s.to(xt.dtype), xt, input_precision=DOT, out_dtype=acc_ty)
    else:
        s = s * _decay(lg, j[:, None], j[None, :])
        out = acc * tl.exp((j + 1).to(acc_ty) * lg)[:, None]
        out = (out + tl.dot(s.to(xt.dtype), xt, input_precision=DOT, out_dtype=acc_ty)) * scale
    rt = i_t * BT + j
    o_base = o + (i_b * T * H + i_h) * V
    tl.store(o_base + rt[:, None] * (H * V) + rv[None, :], out.to(o.dtype.element_ty),
             mask=(rt[:, None] < T) & (rv[None, :] < V))


@triton.jit
def _chunk_dh_kernel(q, do, dht, dh0, dhs, log_gamma, scale, T, H: tl.constexpr, K: tl.constexpr,
                     V: tl.constexpr, NT, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, DOT: tl.constexpr):
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    lg = tl.load(log_gamma + i_h)
    acc_ty = lg.dtype
    rk = i_k * BK + tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    kv_off = rk[:, None] * V + rv[None, :]
    kv_mask = (rk[:, None] < K) & (rv[None, :] < V)
    q_base = q + (i_b * T * H + i_h) * K
    do_base = do + (i_b * T * H + i_h) * V
    j = tl.arange(0, BT)
    q_dec = tl.exp((j + 1).to(acc_ty) * lg) * scale
    dstate = tl.zeros([BK, BV], dtype=acc_ty)                                 # dH_N (BK, BV)
    if USE_DHT:
        dstate += tl.load(dht + i_bh * K * V + kv_off, mask=kv_mask, other=0.0).to(acc_ty)
    for i_rev in range(NT):
        i_t = NT - 1 - i_rev                                                  # reverse by index
        tl.store(dhs + (i_bh * NT + i_t) * K * V + kv_off, dstate.to(dhs.dtype.element_ty), mask=kv_mask)
        L = tl.minimum(BT, T - i_t * BT)
        qt = load_rows_t(q_base, i_t * BT, T, H * K, i_k * BK, K, BT, BK)      # (BK, BT)
        qt = (qt.to(acc_ty) * q_dec[None, :]).to(qt.dtype)
        dot_ = load_rows(do_base, i_t * BT, T, H * V, i_v * BV, V, BT, BV)     # (BT, BV)
        dstate = dstate * tl.exp(L.to(acc_ty) * lg) + tl.dot(qt, dot_, input_precision=DOT, out_dtype=acc_ty)
    if STORE_DH0:
        tl.store(dh0 + i_bh * K * V + kv_off, dstate.to(dh0.dtype.element_ty), mask=kv_mask)


@triton.jit
def _chunk_dqk_kernel(q, k, v, hs, dhs, do, dq, dk, log_gamma, scale, T, H: tl.constexpr, K: tl.constexpr,
                      V: tl.constexpr, NT, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      DOT: tl.constexpr):
    """dQ_[i], dK_[i] of one K block. dK is built transposed, dK^T = dH_{i+1} V^T * gamma^{L_i-1-j}
    + Q^T (dO V^T * D), as a (BK, BT) tile: built as (BT, BK) it spills on sm_80 (float32, 32 B)."""
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    lg = tl.load(log_gamma + i_h)
    acc_ty = lg.dtype
    qk_base = (i_b * T * H + i_h) * K
    vv_base = (i_b * T * H + i_h) * V
    rk = i_k * BK + tl.arange(0, BK)
    st_off = (i_bh * NT + i_t) * K * V
    ds = tl.zeros([BT, BT], dtype=acc_ty)                                     # dO V^T
    dq_acc = tl.zeros([BT, BK], dtype=acc_ty)                                 # dO H_i^T
    dkt_acc = tl.zeros([BK, BT], dtype=acc_ty)                                # dH_{i+1} V^T
    for i_v in range(tl.cdiv(V, BV)):
        rv = i_v * BV + tl.arange(0, BV)
        kv_off = rk[:, None] * V + rv[None, :]
        kv_mask = (rk[:, None] < K) & (rv[None, :] < V)
        vt = load_rows(v + vv_base, i_t * BT, T, H * V, i_v * BV, V, BT, BV)  # (BT, BV)
        dot_ = load_rows(do + vv_base, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
        h = tl.load(hs + st_off + kv_off, mask=kv_mask, other=0.0).to(vt.dtype)     # (BK, BV)
        dh = tl.load(dhs + st_off + kv_off, mask=kv_mask, other=0.0).to(vt.dtype)   # (BK, BV)
        ds += tl.dot(dot_, tl.trans(vt), input_precision=DOT, out_dtype=acc_ty)
        dq_acc += tl.dot(dot_, tl.trans(h), input_precision=DOT, out_dtype=acc_ty)
        dkt_acc += tl.dot(dh, tl.trans(vt), input_precision=DOT, out_dtype=acc_ty)
    j = tl.arange(0, BT)
    rt = i_t * BT + j
    dsD = ds * _decay(lg, j[:, None], j[None, :])                              # (BT, BT)
    kt = load_rows(k + qk_base, i_t * BT, T, H * K, i_k * BK, K, BT, BK)       # (BT, BK)
    dq_t = dq_acc * tl.exp((j + 1).to(acc_ty) * lg)[:, None]
    dq_t = (dq_t + tl.dot(dsD.to(kt.dtype), kt, input_precision=DOT, out_dtype=acc_ty)) * scale
    tl.store(dq + qk_base + rt[:, None] * (H * K) + rk[None, :], dq_t.to(dq.dtype.element_ty),
             mask=(rt[:, None] < T) & (rk[None, :] < K))
    qtt = load_rows_t(q + qk_base, i_t * BT, T, H * K, i_k * BK, K, BT, BK)    # (BK, BT)
    qtt = (qtt.to(acc_ty) * scale).to(qtt.dtype)
    dk_tt = dkt_acc * _tail_decay(lg, tl.minimum(BT, T - i_t * BT), BT)[None, :]
    dk_tt += tl.dot(qtt, dsD.to(qtt.dtype), input_precision=DOT, out_dtype=acc_ty)  # dK^T (BK, BT)
    tl.store(dk + qk_base + rt[None, :] * (H * K) + rk[:, None], dk_tt.to(dk.dtype.element_ty),
             mask=(rt[None, :] < T) & (rk[:, None] < K))


# ---------------------------------------------------------------------------------------- launchers

def _dot(dtype) -> str:
    """tl.dot input precision: float32 inputs use 3xTF32 (tensor cores at float32 accuracy; plain
    TF32 misses the float32 tolerances), float64 and 16-bit inputs multiply exactly ("ieee")."""
    return "tf32x3" if dtype == torch.float32 else "ieee"


# num_warps per launch, the AOT specs below compile the same: chunk_o (forward and dV launch)
# keeps a (BT, BT) and a (BT, BV) accumulator live across its K loop, chunk_dqk three across its
# V loop; at 4 warps they spill (ptxas; forward chunk_o bf16/fp16 232 B sm_90, 140 B sm_80,
# float32 24 B sm_80).
_WARPS = {"o": 8, "dqk": 8}


def _dqk_block_v(BV: int) -> int:
    """chunk_dqk walks V in half-width blocks: its loop feeds three dots from the (BT, BV) tiles
    of V and dO while three accumulators stay live; full-width blocks spill on sm_80 (float32
    36 B, bfloat16 432 B). tl.dot needs >= 16."""
    return max(16, BV // 2)


def _block_cap(dtype) -> int:
    """Largest K / V block: 3xTF32 holds three operand tiles per dot, so float32 inputs use
    32-wide blocks to stay in registers (see AOT_SPECS' ptxas report), the 16-bit types 64."""
    return 32 if dtype == torch.float32 else 64


def _shapes(q, v, chunk_size):
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = tile(min(chunk_size, T), cap=max(16, chunk_size))
    cap = _block_cap(q.dtype)
    return B, T, H, K, V, BT, triton.cdiv(T, BT), tile(K, cap), tile(V, cap)


def _states(k, v, h0, lg, dims, want_ht):
    """chunk_h: boundary states hs (B*H, N, K, V) and the final state (B, H, K, V) or None."""
    B, T, H, K, V, BT, NT, BK, BV = dims
    dt = lg.dtype
    hs = k.new_empty(B * H, NT, K, V, dtype=dt)
    ht = k.new_empty(B, H, K, V, dtype=dt) if want_ht else None
    h0c = None if h0 is None else h0.to(dt).contiguous()
    _chunk_h_fwd_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), B * H)](
        k, v, h0c, ht, hs, lg, T, H, K, V, NT, BT, BK, BV, USE_H0=h0 is not None, STORE_HT=want_ht,
        DOT=_dot(k.dtype))
    return hs, ht


def chunk_fwd(q, k, v, h0, scale: float, chunk_size: int, want_ht: bool):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    dims = B, T, H, K, V, BT, NT, BK, BV = _shapes(q, v, chunk_size)
    lg = log_decay(H, q.device, acc_dtype(q.dtype))
    hs, ht = _states(k, v, h0, lg, dims, want_ht)
    o = torch.empty_like(v)
    _chunk_o_kernel[(triton.cdiv(V, BV), NT, B * H)](q, k, v, hs, o, lg, scale, T, H, K, V, NT, BT, BK, BV,
                                                     DOT=_dot(q.dtype), DV=False, num_warps=_WARPS["o"])
    return o, ht


def chunk_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int):
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    dims = B, T, H, K, V, BT, NT, BK, BV = _shapes(q, v, chunk_size)
    dt = acc_dtype(q.dtype)
    lg = log_decay(H, q.device, dt)
    hs, _ = _states(k, v, h0, lg, dims, False)
    dhs = torch.empty_like(hs)
    dh0 = None if h0 is None else q.new_empty(B, H, K, V, dtype=dt)
    dhtc = None if dht is None else dht.to(dt).contiguous()
    _chunk_dh_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), B * H)](
        q, do, dhtc, dh0, dhs, lg, scale, T, H, K, V, NT, BT, BK, BV,
        USE_DHT=dht is not None, STORE_DH0=h0 is not None, DOT=_dot(q.dtype))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _chunk_dqk_kernel[(triton.cdiv(K, BK), NT, B * H)](q, k, v, hs, dhs, do, dq, dk, lg, scale, T, H, K, V, NT,
                                                       BT, BK, _dqk_block_v(BV), DOT=_dot(q.dtype),
                                                       num_warps=_WARPS["dqk"])
    _chunk_o_kernel[(triton.cdiv(V, BV), NT, B * H)](k, q, do, dhs, dv, lg, scale, T, H, K, V, NT, BT, BK, BV,
                                                     DOT=_dot(q.dtype), DV=True, num_warps=_WARPS["o"])
    return dq, dk, dv, (None if h0 is None else dh0.to(h0.dtype))


def parallel_fwd(q, k, v, h0, scale: float, chunk_size: int, want_ht: bool):
    """parallel_retention on Triton: the chunked kernels (chunk 64) compute the same O."""
    return chunk_fwd(q, k, v, h0, scale, 64, want_ht)


def parallel_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int):
    return chunk_bwd(q, k, v, h0, do, dht, scale, 64)


# ----------------------------------------------------------------------- ahead-of-time compilation

def _spec(name, sig, constexprs, label, warps=4):
    sig = {**sig, "DOT": "constexpr"}
    return AotSpec(module=__name__, name=name, signature=sig, constexprs=constexprs, label=label, num_warps=warps)


def _aot_specs():
    specs = []
    for dt, torch_dt, K in (("fp32", torch.float32, 64), ("bf16", torch.bfloat16, 128),
                            ("fp16", torch.float16, 128)):
        BK = BV = _block_cap(torch_dt)                                        # as _shapes picks them
        shape = {"H": 8, "K": K, "V": 128, "BT": 64, "BK": BK, "BV": BV, "DOT": _dot(torch_dt)}
        specs.append(_spec("_chunk_h_fwd_kernel", {
            "k": f"*{dt}", "v": f"*{dt}", "h0": "*fp32", "ht": "*fp32", "hs": "*fp32", "log_gamma": "*fp32",
            "T": "i32", "H": "constexpr", "K": "constexpr", "V": "constexpr", "NT": "i32", "BT": "constexpr",
            "BK": "constexpr", "BV": "constexpr", "USE_H0": "constexpr", "STORE_HT": "constexpr"},
            {**shape, "USE_H0": True, "STORE_HT": True}, dt))
        for dv in (False, True):
            specs.append(_spec("_chunk_o_kernel", {
                "a": f"*{dt}", "b": f"*{dt}", "x": f"*{dt}", "hs": "*fp32", "o": f"*{dt}", "log_gamma": "*fp32",
                "scale": "fp32", "T": "i32", "H": "constexpr", "K": "constexpr", "V": "constexpr", "NT": "i32",
                "BT": "constexpr", "BK": "constexpr", "BV": "constexpr", "DV": "constexpr"},
                {**shape, "DV": dv}, f"{dt},dv" if dv else dt, _WARPS["o"]))
        specs.append(_spec("_chunk_dh_kernel", {
            "q": f"*{dt}", "do": f"*{dt}", "dht": "*fp32", "dh0": "*fp32", "dhs": "*fp32", "log_gamma": "*fp32",
            "scale": "fp32", "T": "i32", "H": "constexpr", "K": "constexpr", "V": "constexpr", "NT": "i32",
            "BT": "constexpr", "BK": "constexpr", "BV": "constexpr", "USE_DHT": "constexpr",
            "STORE_DH0": "constexpr"}, {**shape, "USE_DHT": True, "STORE_DH0": True}, dt))
        specs.append(_spec("_chunk_dqk_kernel", {
            "q": f"*{dt}", "k": f"*{dt}", "v": f"*{dt}", "hs": "*fp32", "dhs": "*fp32", "do": f"*{dt}",
            "dq": f"*{dt}", "dk": f"*{dt}", "log_gamma": "*fp32", "scale": "fp32", "T": "i32", "H": "constexpr",
            "K": "constexpr", "V": "constexpr", "NT": "i32", "BT": "constexpr", "BK": "constexpr",
            "BV": "constexpr"}, {**shape, "BV": _dqk_block_v(BV)}, dt, _WARPS["dqk"]))
    return specs


AOT_SPECS = _aot_specs()
