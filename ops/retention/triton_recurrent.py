"""Fused recurrent retention in Triton: forward and backward, one time step at a time.

Per head, gamma = gamma_h, q scaled by ``scale``:

    forward:   S_t = gamma S_{t-1} + k_t^T v_t,   o_t = q_t S_t
    backward:  dq_t = do_t S_t^T                      (S_t recomputed, forward in time)
               G_t = gamma G_{t+1} + q_t^T do_t,  G_T = d final_state     (reverse, by index)
               dk_t = v_t G_t^T,  dv_t = k_t G_t,  d initial_state = gamma G_0

One program per (V block, K block, batch*head) keeps its (BK, BV) tile of the state in registers
for the whole sequence (float32, float64 for float64 inputs). Outputs that reduce over the other
block dimension (o and dq over K resp. V blocks, dk over V blocks, dv over K blocks) are written
per block and summed afterwards.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_aot import AotSpec
from .common import acc_dtype, log_decay

__all__ = ["recurrent_fwd", "recurrent_bwd", "AOT_SPECS"]


@triton.jit
def _recurrent_fwd_kernel(q, k, v, h0, ht, o_part, log_gamma, scale, T, B, H: tl.constexpr, K: tl.constexpr,
                          V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                          USE_H0: tl.constexpr, STORE_HT: tl.constexpr):
    i_v, i_k, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    lg = tl.load(log_gamma + i_h)
    acc_ty = lg.dtype
    gamma = tl.exp(lg)
    rk = i_k * BK + tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    mk, mv = rk < K, rv < V
    kv_off = rk[:, None] * V + rv[None, :]
    kv_mask = mk[:, None] & mv[None, :]
    p_q = q + (i_b * T * H + i_h) * K + rk                                   # step t: + t*H*K
    p_k = k + (i_b * T * H + i_h) * K + rk
    p_v = v + (i_b * T * H + i_h) * V + rv
    p_o = o_part + ((i_k * B + i_b) * T * H + i_h) * V + rv
    state = tl.zeros([BK, BV], dtype=acc_ty)                                 # S (BK, BV)
    if USE_H0:
        state += tl.load(h0 + i_bh * K * V + kv_off, mask=kv_mask, other=0.0).to(acc_ty)
    for t in range(T):
        q_t = tl.load(p_q + t * H * K, mask=mk, other=0.0).to(acc_ty) * scale  # (BK,)
        k_t = tl.load(p_k + t * H * K, mask=mk, other=0.0).to(acc_ty)
        v_t = tl.load(p_v + t * H * V, mask=mv, other=0.0).to(acc_ty)          # (BV,)
        state = state * gamma + k_t[:, None] * v_t[None, :]
        o_t = tl.sum(state * q_t[:, None], axis=0)                           # (BV,)
        tl.store(p_o + t * H * V, o_t.to(o_part.dtype.element_ty), mask=mv)
    if STORE_HT:
        tl.store(ht + i_bh * K * V + kv_off, state.to(ht.dtype.element_ty), mask=kv_mask)


@triton.jit
def _recurrent_bwd_kernel(q, k, v, h0, do, dht, dh0, dq_part, dk_part, dv_part, log_gamma, scale, T, B,
                          H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                          BV: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr):
    i_v, i_k, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    lg = tl.load(log_gamma + i_h)
    acc_ty = lg.dtype
    gamma = tl.exp(lg)
    rk = i_k * BK + tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    mk, mv = rk < K, rv < V
    kv_off = rk[:, None] * V + rv[None, :]
    kv_mask = mk[:, None] & mv[None, :]
    p_q = q + (i_b * T * H + i_h) * K + rk
    p_k = k + (i_b * T * H + i_h) * K + rk
    p_v = v + (i_b * T * H + i_h) * V + rv
    p_do = do + (i_b * T * H + i_h) * V + rv
    p_dq = dq_part + ((i_v * B + i_b) * T * H + i_h) * K + rk                # partial over V blocks
    p_dk = dk_part + ((i_v * B + i_b) * T * H + i_h) * K + rk                # partial over V blocks
    p_dv = dv_part + ((i_k * B + i_b) * T * H + i_h) * V + rv                # partial over K blocks
    # forward in time: S_t again, dq_t = scale * do_t S_t^T
    state = tl.zeros([BK, BV], dtype=acc_ty)
    if USE_H0:
        state += tl.load(h0 + i_bh * K * V + kv_off, mask=kv_mask, other=0.0).to(acc_ty)
    for t in range(T):
        k_t = tl.load(p_k + t * H * K, mask=mk, other=0.0).to(acc_ty)
        v_t = tl.load(p_v + t * H * V, mask=mv, other=0.0).to(acc_ty)
        do_t = tl.load(p_do + t * H * V, mask=mv, other=0.0).to(acc_ty)
        state = state * gamma + k_t[:, None] * v_t[None, :]
        dq_t = tl.sum(state * do_t[None, :], axis=1) * scale                 # (BK,)
        tl.store(p_dq + t * H * K, dq_t.to(dq_part.dtype.element_ty), mask=mk)
    # reverse in time by index: G_t = gamma G_{t+1} + scale q_t^T do_t
    G = tl.zeros([BK, BV], dtype=acc_ty)
    if USE_DHT:
        G += tl.load(dht + i_bh * K * V + kv_off, mask=kv_mask, other=0.0).to(acc_ty)
    for t_rev in range(T):
        t = T - 1 - t_rev
        q_t = tl.load(p_q + t * H * K, mask=mk, other=0.0).to(acc_ty) * scale
        k_t = tl.load(p_k + t * H * K, mask=mk, other=0.0).to(acc_ty)
        v_t = tl.load(p_v + t * H * V, mask=mv, other=0.0).to(acc_ty)
        do_t = tl.load(p_do + t * H * V, mask=mv, other=0.0).to(acc_ty)
        G += q_t[:, None] * do_t[None, :]
        tl.store(p_dk + t * H * K, tl.sum(G * v_t[None, :], axis=1).to(dk_part.dtype.element_ty), mask=mk)
        tl.store(p_dv + t * H * V, tl.sum(G * k_t[:, None], axis=0).to(dv_part.dtype.element_ty), mask=mv)
        G = G * gamma
    if USE_H0:
        tl.store(dh0 + i_bh * K * V + kv_off, G.to(dh0.dtype.element_ty), mask=kv_mask)


def _blocks(K: int, V: int):
    return min(64, triton.next_power_of_2(K)), min(64, triton.next_power_of_2(V))


def recurrent_fwd(q, k, v, h0, scale: float, chunk_size: int, want_ht: bool):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV = _blocks(K, V)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    dt = acc_dtype(q.dtype)
    lg = log_decay(H, q.device, dt)
    o_part = v.new_empty(NK, B, T, H, V, dtype=dt)
    ht = q.new_empty(B, H, K, V, dtype=dt) if want_ht else None
    h0c = None if h0 is None else h0.to(dt).contiguous()
    _recurrent_fwd_kernel[(NV, NK, B * H)](q, k, v, h0c, ht, o_part, lg, scale, T, B, H, K, V, BK, BV,
                                           USE_H0=h0 is not None, STORE_HT=want_ht)
    return o_part.sum(0).to(v.dtype), ht


def recurrent_bwd(q, k, v, h0, do, dht, scale: float, chunk_size: int):
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV = _blocks(K, V)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    dt = acc_dtype(q.dtype)
    lg = log_decay(H, q.device, dt)
    dq_part = q.new_empty(NV, B, T, H, K, dtype=dt)
    dk_part = torch.empty_like(dq_part)
    dv_part = v.new_empty(NK, B, T, H, V, dtype=dt)
    dh0 = None if h0 is None else q.new_empty(B, H, K, V, dtype=dt)
    h0c = None if h0 is None else h0.to(dt).contiguous()
    dhtc = None if dht is None else dht.to(dt).contiguous()
    _recurrent_bwd_kernel[(NV, NK, B * H)](q, k, v, h0c, do, dhtc, dh0, dq_part, dk_part, dv_part, lg, scale,
                                           T, B, H, K, V, BK, BV, USE_H0=h0 is not None, USE_DHT=dht is not None)
    return (dq_part.sum(0).to(q.dtype), dk_part.sum(0).to(k.dtype), dv_part.sum(0).to(v.dtype),
            None if h0 is None else dh0.to(h0.dtype))


def _aot_specs():
    specs = []
    for dt in ("fp32", "bf16", "fp16"):
        common = {"q": f"*{dt}", "k": f"*{dt}", "v": f"*{dt}", "h0": "*fp32"}
        shape = {"H": 8, "K": 64, "V": 128, "BK": 64, "BV": 64}
        specs.append(AotSpec(module=__name__, name="_recurrent_fwd_kernel", label=dt, signature={
            **common, "ht": "*fp32", "o_part": "*fp32", "log_gamma": "*fp32", "scale": "fp32", "T": "i32",
            "B": "i32", "H": "constexpr", "K": "constexpr", "V": "constexpr", "BK": "constexpr",
            "BV": "constexpr", "USE_H0": "constexpr", "STORE_HT": "constexpr"},
            constexprs={**shape, "USE_H0": True, "STORE_HT": True}))
        specs.append(AotSpec(module=__name__, name="_recurrent_bwd_kernel", label=dt, signature={
            **common, "do": f"*{dt}", "dht": "*fp32", "dh0": "*fp32", "dq_part": "*fp32", "dk_part": "*fp32",
            "dv_part": "*fp32", "log_gamma": "*fp32", "scale": "fp32", "T": "i32", "B": "i32",
            "H": "constexpr", "K": "constexpr", "V": "constexpr", "BK": "constexpr", "BV": "constexpr",
            "USE_H0": "constexpr", "USE_DHT": "constexpr"},
            constexprs={**shape, "USE_H0": True, "USE_DHT": True}))
    return specs


AOT_SPECS = _aot_specs()
