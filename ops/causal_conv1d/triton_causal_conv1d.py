"""Causal depthwise conv1d Triton kernels: forward, backward (dpre + dweight/dbias, dx,
dinitial_states) and the decode update. Each program owns a (BLOCK_D channels, BLOCK_T times)
tile of one batch row and loops over the width taps:

    forward:  y[d, t] = act(b[d] + sum_k w[d, k] * xv[d, t - (W-1) + k])
    backward: g[t]    = dy[t] * act'(pre[t])                   (pre recomputed; act' = 1 without act)
              dw[d,k] = sum_{b,t} g[t] xv[t - (W-1) + k],  db[d] = sum_{b,t} g[t]   (partials per tile)
              dx[p]   = sum_k w[k] g[p + (W-1) - k]           (same sequence only, t < L)
              dinit[j] = sum_{k <= j} w[k] g[s + j - k]        (t < end of the sequence)

xv is x inside the sequence, the sequence's initial state before its start s, zero before that.
Packed sequences come as per-position START (sequence start) and SEQ (sequence index) int32
arrays; without them s = 0 and the state index is the batch row. Accumulation in float32
(float64 for float64 input: IS_F64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_aot import AotSpec
from .._triton_common import to_acc
from .packing import seq_ids


@triton.jit
def _taps_start(START, SEQ, t, tmask, pid_b, HAS_CU: tl.constexpr):
    """Sequence start and state index for each time in the tile (BLOCK_T,)."""
    if HAS_CU:
        s = tl.load(START + t, mask=tmask, other=0)
        seq = tl.load(SEQ + t, mask=tmask, other=0).to(tl.int64)
    else:
        s = tl.zeros_like(t)
        seq = tl.zeros_like(t).to(tl.int64) + pid_b
    return s, seq


@triton.jit
def _tap(X, INIT, x_row, d, dmask, p, s, seq, tmask, stride_xd, stride_xt, D,
         K: tl.constexpr, HAS_INIT: tl.constexpr, IS_F64: tl.constexpr):
    """xv[d, p] for a (BLOCK_D, BLOCK_T) tile of positions p (per time), from x or the initial state."""
    inside = p >= s
    m = dmask[:, None] & (tmask & inside)[None, :]
    v = to_acc(tl.load(X + x_row + d[:, None] * stride_xd + p[None, :] * stride_xt, mask=m, other=0.0), IS_F64)
    if HAS_INIT:
        j = p - s + K                                            # index into the sequence's state
        mi = dmask[:, None] & (tmask & (p < s) & (j >= 0))[None, :]
        v += to_acc(tl.load(INIT + seq[None, :] * D * K + d[:, None] * K + j[None, :], mask=mi, other=0.0), IS_F64)
    return v


@triton.jit
def _causal_conv1d_fwd_kernel(
    X, WGT, BIAS, INIT, START, SEQ, Y,       # X (B, D, L) strided; WGT (D, W); INIT (n, D, W-1); Y (B, D, L)
    L, D, stride_xb, stride_xd, stride_xt,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_CU: tl.constexpr,
    ACT: tl.constexpr, IS_F64: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    dmask = d < D
    tmask = t < L
    s, seq = _taps_start(START, SEQ, t, tmask, pid_b, HAS_CU)
    x_row = pid_b * stride_xb
    acc = to_acc(tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32), IS_F64)
    for k in tl.static_range(WIDTH):
        w = to_acc(tl.load(WGT + d * WIDTH + k, mask=dmask, other=0.0), IS_F64)
        acc += w[:, None] * _tap(X, INIT, x_row, d, dmask, t - (WIDTH - 1) + k, s, seq, tmask,
                                 stride_xd, stride_xt, D, WIDTH - 1, HAS_INIT, IS_F64)
    if HAS_BIAS:
        acc += to_acc(tl.load(BIAS + d, mask=dmask, other=0.0), IS_F64)[:, None]
    if ACT:
        acc = acc * tl.sigmoid(acc)
    m = dmask[:, None] & tmask[None, :]
    tl.store(Y + pid_b * D * L + d[:, None] * L + t[None, :], acc.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _causal_conv1d_bwd_dw_kernel(
    X, WGT, BIAS, INIT, START, SEQ, DY, G, DW_PART, DB_PART,  # G (B, D, L) = dpre (written when ACT)
    L, D, stride_xb, stride_xd, stride_xt,                    # DW_PART (B * nT, D, W); DB_PART (B * nT, D)
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_CU: tl.constexpr,
    ACT: tl.constexpr, IS_F64: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(2)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dmask = d < D
    tmask = t < L
    m = dmask[:, None] & tmask[None, :]
    s, seq = _taps_start(START, SEQ, t, tmask, pid_b, HAS_CU)
    x_row = pid_b * stride_xb
    offs = pid_b * D * L + d[:, None] * L + t[None, :]
    g = to_acc(tl.load(DY + offs, mask=m, other=0.0), IS_F64)
    if ACT:
        pre = to_acc(tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32), IS_F64)
        for k in tl.static_range(WIDTH):
            w = to_acc(tl.load(WGT + d * WIDTH + k, mask=dmask, other=0.0), IS_F64)
            pre += w[:, None] * _tap(X, INIT, x_row, d, dmask, t - (WIDTH - 1) + k, s, seq, tmask,
                                     stride_xd, stride_xt, D, WIDTH - 1, HAS_INIT, IS_F64)
        if HAS_BIAS:
            pre += to_acc(tl.load(BIAS + d, mask=dmask, other=0.0), IS_F64)[:, None]
        sig = tl.sigmoid(pre)
        g = g * sig * (1.0 + pre * (1.0 - sig))
        tl.store(G + offs, g, mask=m)
    part = pid_b * tl.num_programs(2) + pid_t
    if HAS_BIAS:
        tl.store(DB_PART + part * D + d, tl.sum(g, axis=1), mask=dmask)
    for k in tl.static_range(WIDTH):
        xv = _tap(X, INIT, x_row, d, dmask, t - (WIDTH - 1) + k, s, seq, tmask,
                  stride_xd, stride_xt, D, WIDTH - 1, HAS_INIT, IS_F64)
        tl.store(DW_PART + part * D * WIDTH + d * WIDTH + k, tl.sum(g * xv, axis=1), mask=dmask)


@triton.jit
def _causal_conv1d_bwd_dx_kernel(
    G, WGT, SEQ, DX,                          # G (B, D, L) dpre; DX (B, D, L)
    L, D,
    WIDTH: tl.constexpr, HAS_CU: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    p = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    dmask = d < D
    pmask = p < L
    if HAS_CU:
        seq_p = tl.load(SEQ + p, mask=pmask, other=0)
    row = pid_b * D * L + d[:, None] * L
    acc = to_acc(tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32), IS_F64)
    for k in tl.static_range(WIDTH):
        w = to_acc(tl.load(WGT + d * WIDTH + k, mask=dmask, other=0.0), IS_F64)
        tt = p + (WIDTH - 1) - k                                  # the output that read x[p] through tap k
        valid = pmask & (tt < L)
        if HAS_CU:
            valid = valid & (tl.load(SEQ + tt, mask=valid, other=-1) == seq_p)
        acc += w[:, None] * to_acc(tl.load(G + row + tt[None, :], mask=dmask[:, None] & valid[None, :], other=0.0),
                                   IS_F64)
    tl.store(DX + row + p[None, :], acc.to(DX.dtype.element_ty), mask=dmask[:, None] & pmask[None, :])


@triton.jit
def _causal_conv1d_bwd_dinit_kernel(
    G, WGT, CU, DINIT,                        # DINIT (n, D, W-1); CU (n + 1,) when HAS_CU
    L, D,
    WIDTH: tl.constexpr, HAS_CU: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    j = tl.arange(0, BLOCK_K)
    dmask = d < D
    K: tl.constexpr = WIDTH - 1
    if HAS_CU:
        s = tl.load(CU + i)
        e = tl.load(CU + i + 1)
        row = d[:, None] * L
    else:
        s = 0
        e = L
        row = i * D * L + d[:, None] * L
    acc = to_acc(tl.zeros([BLOCK_D, BLOCK_K], dtype=tl.float32), IS_F64)
    for k in tl.static_range(WIDTH):
        w = to_acc(tl.load(WGT + d * WIDTH + k, mask=dmask, other=0.0), IS_F64)
        tt = s + j - k                                            # output reading state j through tap k
        valid = (j >= k) & (j < K) & (tt < e)
        acc += w[:, None] * to_acc(tl.load(G + row + tt[None, :], mask=dmask[:, None] & valid[None, :], other=0.0),
                                   IS_F64)
    tl.store(DINIT + i * D * K + d[:, None] * K + j[None, :], acc.to(DINIT.dtype.element_ty),
             mask=dmask[:, None] & (j < K)[None, :])


@triton.jit
def _causal_conv1d_update_kernel(
    X, STATE, WGT, BIAS, Y,                   # X (B, D, T) strided; STATE (B, D, S) strided, updated in place
    T, D, S, stride_xb, stride_xd, stride_xt, stride_sb, stride_sd, stride_ss,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # virtual sequence v = [state (S) | x (T)]; y[t] = act(b + sum_k w[k] v[S - (W-1) + t + k]);
    # new state[j] = v[T + j]
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    x_row = X + pid_b * stride_xb + d[:, None] * stride_xd
    s_row = STATE + pid_b * stride_sb + d[:, None] * stride_sd
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tmask = t < T
        acc = to_acc(tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32), IS_F64)
        for k in tl.static_range(WIDTH):
            w = to_acc(tl.load(WGT + d * WIDTH + k, mask=dmask, other=0.0), IS_F64)
            q = S - (WIDTH - 1) + t + k
            from_x = dmask[:, None] & (tmask & (q >= S))[None, :]
            from_s = dmask[:, None] & (tmask & (q < S))[None, :]
            v = to_acc(tl.load(x_row + (q - S)[None, :] * stride_xt, mask=from_x, other=0.0), IS_F64)
            v += to_acc(tl.load(s_row + q[None, :] * stride_ss, mask=from_s, other=0.0), IS_F64)
            acc += w[:, None] * v
        if HAS_BIAS:
            acc += to_acc(tl.load(BIAS + d, mask=dmask, other=0.0), IS_F64)[:, None]
        if ACT:
            acc = acc * tl.sigmoid(acc)
        tl.store(Y + pid_b * D * T + d[:, None] * T + t[None, :], acc.to(Y.dtype.element_ty),
                 mask=dmask[:, None] & tmask[None, :])
    j = tl.arange(0, BLOCK_S)
    q = T + j
    from_x = dmask[:, None] & ((j < S) & (q >= S))[None, :]
    from_s = dmask[:, None] & ((j < S) & (q < S))[None, :]
    new = tl.load(x_row + (q - S)[None, :] * stride_xt, mask=from_x, other=0.0).to(STATE.dtype.element_ty)
    new += tl.load(s_row + q[None, :] * stride_ss, mask=from_s, other=0.0).to(STATE.dtype.element_ty)
    tl.debug_barrier()  # every old state value is read before any is overwritten
    tl.store(s_row + j[None, :] * stride_ss, new, mask=dmask[:, None] & (j < S)[None, :])


def _blocks(D: int, L: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_T): 1024-element tiles, contiguous along time (8 x 128 at long L: 62 / 134 / 50
    registers per thread for fwd / bwd_dw / bwd_dx on sm_80 with 4 warps, no spills)."""
    block_t = min(128, triton.next_power_of_2(max(L, 1)))
    block_d = max(1, min(64, triton.next_power_of_2(max(D, 1)), 1024 // block_t))
    return block_d, block_t


def _packing(cu_seqlens, L):
    """START, SEQ (L,) int32 for packed sequences, else (None, None)."""
    if cu_seqlens is None:
        return None, None
    sid = seq_ids(cu_seqlens, L)
    return cu_seqlens.long()[sid].to(torch.int32).contiguous(), sid.to(torch.int32).contiguous()


def _common(x, weight, bias, initial_states, cu_seqlens):
    B, D, L = x.shape
    if D * L >= 2 ** 31:  # in-kernel offsets within one batch row are int32
        raise RuntimeError(f"causal_conv1d: backend='triton' needs dim * L < 2**31 per batch row, got {D} * {L}; "
                           "split the sequence (initial_states) or use backend='cpu'")
    W = weight.shape[1]
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    start, seq = _packing(cu_seqlens, L)
    w = weight.contiguous()
    b = bias.contiguous() if bias is not None else None
    init = initial_states.contiguous() if initial_states is not None else None
    flags = dict(WIDTH=W, HAS_BIAS=b is not None, HAS_INIT=init is not None, HAS_CU=cu_seqlens is not None,
                 IS_F64=ct == torch.float64)
    return B, D, L, W, ct, start, seq, w, b, init, flags


def causal_conv1d_fwd(x, weight, bias, initial_states, cu_seqlens, activation: str) -> torch.Tensor:
    """x (B, D, L) any strides -> y (B, D, L) contiguous, x's dtype."""
    B, D, L, W, ct, start, seq, w, b, init, flags = _common(x, weight, bias, initial_states, cu_seqlens)
    y = torch.empty((B, D, L), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    bd, bt = _blocks(D, L)
    dummy = w
    _causal_conv1d_fwd_kernel[(B, triton.cdiv(D, bd), triton.cdiv(L, bt))](
        x, w, b if b is not None else dummy, init if init is not None else dummy,
        start if start is not None else dummy, seq if seq is not None else dummy, y,
        L, D, x.stride(0), x.stride(1), x.stride(2),
        ACT=bool(activation), BLOCK_D=bd, BLOCK_T=bt, **flags,
    )
    return y


def causal_conv1d_bwd(dy, x, weight, bias, initial_states, cu_seqlens, activation: str):
    """Returns dx, dweight, dbias (or None), dinitial_states (or None)."""
    B, D, L, W, ct, start, seq, w, b, init, flags = _common(x, weight, bias, initial_states, cu_seqlens)
    dy = dy.contiguous()
    bd, bt = _blocks(D, L)
    nd, nt = triton.cdiv(D, bd), triton.cdiv(L, bt)
    dx = torch.empty((B, D, L), dtype=x.dtype, device=x.device)
    dw_part = torch.zeros((B * nt, D, W), dtype=ct, device=x.device)
    db_part = torch.zeros((B * nt, D), dtype=ct, device=x.device) if b is not None else None
    g = torch.empty((B, D, L), dtype=ct, device=x.device) if activation else dy
    dinit = torch.empty(initial_states.shape, dtype=initial_states.dtype, device=x.device) if init is not None else None
    if B * D * L > 0:
        dummy = w
        _causal_conv1d_bwd_dw_kernel[(B, nd, nt)](
            x, w, b if b is not None else dummy, init if init is not None else dummy,
            start if start is not None else dummy, seq if seq is not None else dummy, dy, g, dw_part,
            db_part if db_part is not None else dw_part,
            L, D, x.stride(0), x.stride(1), x.stride(2),
            ACT=bool(activation), BLOCK_D=bd, BLOCK_T=bt, **flags,
        )
        _causal_conv1d_bwd_dx_kernel[(B, nd, nt)](
            g, w, seq if seq is not None else dummy, dx, L, D,
            WIDTH=W, HAS_CU=flags["HAS_CU"], IS_F64=flags["IS_F64"], BLOCK_D=bd, BLOCK_T=bt,
        )
    if dinit is not None:
        if L > 0 and W > 1:
            n = dinit.shape[0]
            bdi = min(64, triton.next_power_of_2(D))
            _causal_conv1d_bwd_dinit_kernel[(n, triton.cdiv(D, bdi))](
                g, w, cu_seqlens.contiguous() if cu_seqlens is not None else w, dinit, L, D,
                WIDTH=W, HAS_CU=flags["HAS_CU"], IS_F64=flags["IS_F64"], BLOCK_D=bdi,
                BLOCK_K=triton.next_power_of_2(W - 1),
            )
        else:
            dinit.zero_()
    dweight = dw_part.sum(dim=0).to(weight.dtype)
    dbias = db_part.sum(dim=0).to(bias.dtype) if db_part is not None else None
    return dx, dweight, dbias, dinit


def causal_conv1d_update_triton(x, conv_state, weight, bias, activation: str) -> torch.Tensor:
    """Decode step(s) in one kernel: x (B, D) or (B, D, T); conv_state (B, D, S) rolled in place.
    Inference only: no autograd through this path."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, conv_state, weight, bias)):
        raise RuntimeError("causal_conv1d_update: backend='triton' is an inference kernel and does not "
                           "differentiate; use backend='cpu' (pure torch) or causal_conv1d with "
                           "initial_states for training")
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    B, D, T = x3.shape
    W = weight.shape[1]
    S = conv_state.shape[-1]
    y = torch.empty((B, D, T), dtype=x.dtype, device=x.device)
    if y.numel() > 0:
        w = weight.contiguous()
        b = bias.contiguous() if bias is not None else None
        bt = min(16, triton.next_power_of_2(T))
        bs = triton.next_power_of_2(max(S, 1))
        bd = max(1, min(64, triton.next_power_of_2(D), 2048 // max(bt, bs)))
        _causal_conv1d_update_kernel[(B, triton.cdiv(D, bd))](
            x3, conv_state, w, b if b is not None else w, y,
            T, D, S, x3.stride(0), x3.stride(1), x3.stride(2),
            conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
            WIDTH=W, HAS_BIAS=b is not None, ACT=bool(activation), IS_F64=x.dtype == torch.float64,
            BLOCK_D=bd, BLOCK_T=bt, BLOCK_S=bs,
        )
    return y[..., 0] if x.dim() == 2 else y


# ---- ahead-of-time compilation specs (tests/test_triton_aot.py) ----
def _sig(t, **ptrs):
    return {k: v.format(t=t) for k, v in ptrs.items()}


_X = dict(L="i32", D="i32", stride_xb="i32", stride_xd="i32", stride_xt="i32")
_FWD = lambda t: {**_sig(t, X="*{t}", WGT="*fp32", BIAS="*fp32", INIT="*{t}", START="*i32", SEQ="*i32", Y="*{t}"), **_X}  # noqa: E731
_DW = lambda t: {**_sig(t, X="*{t}", WGT="*fp32", BIAS="*fp32", INIT="*{t}", START="*i32", SEQ="*i32", DY="*{t}",  # noqa: E731
                        G="*fp32", DW_PART="*fp32", DB_PART="*fp32"), **_X}
_TILE = ("WIDTH", "HAS_BIAS", "HAS_INIT", "HAS_CU", "ACT", "IS_F64", "BLOCK_D", "BLOCK_T")


def _spec(name, sig, label, **const):
    return AotSpec(module=__name__, name=name, signature={**sig, **{c: "constexpr" for c in const}},
                   constexprs=const, label=label)


AOT_SPECS = [
    spec
    for t, label, cfg in (
        ("bf16", "mamba-w4-silu", dict(WIDTH=4, HAS_BIAS=True, HAS_INIT=False, HAS_CU=False, ACT=True)),
        ("fp32", "w3-states-packed", dict(WIDTH=3, HAS_BIAS=False, HAS_INIT=True, HAS_CU=True, ACT=False)),
    )
    for spec in (
        _spec("_causal_conv1d_fwd_kernel", _FWD(t), f"{t}-{label}", IS_F64=False, BLOCK_D=8, BLOCK_T=128, **cfg),
        _spec("_causal_conv1d_bwd_dw_kernel", _DW(t), f"{t}-{label}", IS_F64=False, BLOCK_D=8, BLOCK_T=128, **cfg),
        _spec("_causal_conv1d_bwd_dx_kernel", {"G": "*fp32", "WGT": "*fp32", "SEQ": "*i32", "DX": f"*{t}",
                                               "L": "i32", "D": "i32"},
              f"{t}-{label}", WIDTH=cfg["WIDTH"], HAS_CU=cfg["HAS_CU"], IS_F64=False, BLOCK_D=8, BLOCK_T=128),
        _spec("_causal_conv1d_bwd_dinit_kernel", {"G": "*fp32", "WGT": "*fp32", "CU": "*i32", "DINIT": f"*{t}",
                                                  "L": "i32", "D": "i32"},
              f"{t}-{label}", WIDTH=cfg["WIDTH"], HAS_CU=cfg["HAS_CU"], IS_F64=False, BLOCK_D=64,
              BLOCK_K=triton.next_power_of_2(cfg["WIDTH"] - 1)),
        _spec("_causal_conv1d_update_kernel",
              {**_sig(t, X="*{t}", STATE="*{t}", WGT="*fp32", BIAS="*fp32", Y="*{t}"),
               **{k: "i32" for k in ("T", "D", "S", "stride_xb", "stride_xd", "stride_xt",
                                     "stride_sb", "stride_sd", "stride_ss")}},
              f"{t}-{label}", WIDTH=cfg["WIDTH"], HAS_BIAS=cfg["HAS_BIAS"], ACT=cfg["ACT"], IS_F64=False,
              BLOCK_D=64, BLOCK_T=1, BLOCK_S=4),
    )
]
