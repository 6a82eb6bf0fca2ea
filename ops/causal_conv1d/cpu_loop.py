"""Causal depthwise conv1d on CPU as fused C loops (ops/_cpu_jit): one pass per row for the forward,
one for the backward; ``None`` is returned where the caller keeps its torch path (no compiler, CUDA
tensors, dtypes other than float32/float64).

Per row (batch b, channel d) and segment [s, e) (the whole row, or one packed sequence), with
K = W - 1 and the taps before s read from that segment's initial state h (zeros without one):

    o_t = bias + sum_k w_k xs_{t-K+k},   xs_u = x_u (u >= s), h_{u-s+K} (u < s);   y_t = act(o_t)
    do_t = dy_t act'(o_t)      (act' = sigmoid(o) (1 + o (1 - sigmoid(o))) for silu; 1 without)
    dx_u = sum_k w_k do_{u+K-k}   (do_t = 0 for t >= e: nothing flows across a segment's end)
    dh_j = sum_{k <= j} w_k do_{s+j-k},   dw_k = sum_t do_t xs_{t-K+k},   dbias = sum_t do_t

The forward is a tile of W multiply-adds per output (vectorised along t) and the activation; the
backward recomputes o, keeps do of one segment in a per-thread buffer and reads it for dx, dh, dw and
dbias. F.conv1d on the left-padded input costs a padded copy, a separate activation and, in the
backward, a second convolution, a product and a sum per tap and the padding again (torch path in
``cpu.py``). x and dy are read with their batch and channel strides (time contiguous), so a slice
of Mamba's in_proj output needs no copy. float32 uses the vectorised exp of ``_cpu_math``.
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, I64, PTR, ptr
from .._cpu_math import EXP_F32_SOURCE
from .._cpu_transpose import transpose_copy

__all__ = ["conv_fwd", "conv_bwd"]

_C_SOURCE = EXP_F32_SOURCE + r"""
#ifdef _OPENMP
#include <omp.h>
#endif
#define TILE 256
/* o over [t0, t0 + n) of one row, all taps inside the segment (t0 - K >= s): acc = bias + sum_k w_k x_{t-K+k} */
#define CONV_TILE(TY, acc, xr, wr, W, K, bv, t0, n)                                               \
    for (int64_t j = 0; j < n; ++j) acc[j] = bv;                                                  \
    for (int64_t k = 0; k < W; ++k) {                                                             \
        const TY wk = wr[k];                                                                      \
        const TY* xs = xr + t0 - K + k;                                                           \
        _Pragma("omp simd")                                                                       \
        for (int64_t j = 0; j < n; ++j) acc[j] += wk * xs[j];                                     \
    }
/* o_t for the first K outputs of a segment, whose early taps read the initial state hr (or 0) */
#define CONV_HEAD(TY, xr, wr, W, K, bv, hr, s, t, out)                                            \
    {                                                                                             \
        TY a_ = bv;                                                                               \
        for (int64_t k = 0; k < W; ++k) {                                                         \
            const int64_t u = t - K + k;                                                          \
            a_ += wr[k] * (u >= s ? xr[u] : (hr ? hr[u - s + K] : (TY)0));                        \
        }                                                                                         \
        out = a_;                                                                                 \
    }
/* x: row (b, d) at x + b * sxb + d * sxd, time contiguous; y: (B, D, L) contiguous; seg: nseg + 1 segment bounds
   shared by all rows ([0, L] per batch row, or cu_seqlens with B = 1); init: (n, D, K), the state of segment i of
   batch row b at row (nseg == 1 ? b : i), or NULL. */
#define DEF_FWD(TY, SUF, EXP)                                                                     \
void cc1d_fwd_##SUF(const TY* x, int64_t sxb, int64_t sxd, const TY* w, const TY* bias, const TY* init, \
                    const int64_t* seg, int64_t nseg, TY* y, int64_t B, int64_t D, int64_t L, int64_t W, \
                    int64_t silu, int64_t nthreads) {                                             \
    const int64_t K = W - 1;                                                                      \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if (B * D * L > 65536)")     \
    for (int64_t r = 0; r < B * D; ++r) {                                                         \
        const int64_t b = r / D, d = r % D;                                                       \
        const TY* xr = x + b * sxb + d * sxd;                                                     \
        const TY* wr = w + d * W;                                                                 \
        const TY bv = bias ? bias[d] : (TY)0;                                                     \
        TY* yr = y + r * L;                                                                       \
        TY acc[TILE];                                                                             \
        for (int64_t i = 0; i < nseg; ++i) {                                                      \
            const int64_t s = seg[i], e = seg[i + 1], head = s + K < e ? s + K : e;               \
            const TY* hr = init ? init + ((nseg == 1 ? b : i) * D + d) * K : 0;                   \
            for (int64_t t = s; t < head; ++t) {                                                  \
                TY o;                                                                             \
                CONV_HEAD(TY, xr, wr, W, K, bv, hr, s, t, o)                                      \
                yr[t] = silu ? o / ((TY)1 + EXP(-o)) : o;                                         \
            }                                                                                     \
            for (int64_t t0 = head; t0 < e; t0 += TILE) {                                         \
                const int64_t n = e - t0 < TILE ? e - t0 : TILE;                                  \
                CONV_TILE(TY, acc, xr, wr, W, K, bv, t0, n)                                       \
                TY* yo = yr + t0;                                                                 \
                if (silu) {                                                                       \
                    _Pragma("omp simd")                                                           \
                    for (int64_t j = 0; j < n; ++j) yo[j] = acc[j] / ((TY)1 + EXP(-acc[j]));      \
                } else {                                                                          \
                    for (int64_t j = 0; j < n; ++j) yo[j] = acc[j];                               \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}
/* dy: row (b, d) at dy + b * sdb + d * sdd, time contiguous; dx: (B, D, L) contiguous; dw: (B, D, W) per batch row;
   db: (B, D) or NULL; dinit: like init, or NULL. Segment and state indexing as in the forward. */
#define DEF_BWD(TY, SUF, EXP)                                                                     \
void cc1d_bwd_##SUF(const TY* x, int64_t sxb, int64_t sxd, const TY* w, const TY* bias, const TY* init, \
                    const int64_t* seg, int64_t nseg, const TY* dy, int64_t sdb, int64_t sdd, TY* dx, \
                    TY* dw, TY* db, TY* dinit, int64_t B, int64_t D, int64_t L, int64_t W, int64_t silu, \
                    int64_t nthreads) {                                                           \
    const int64_t K = W - 1;                                                                      \
    _Pragma("omp parallel num_threads(nthreads) if (B * D * L > 65536)")                          \
    {                                                                                             \
        TY* g = (TY*)malloc(sizeof(TY) * (L + K + 1));           /* do of one segment, K zeros after */ \
        TY acc[TILE];                                                                             \
        _Pragma("omp for schedule(static)")                                                       \
        for (int64_t r = 0; r < B * D; ++r) {                                                     \
            const int64_t b = r / D, d = r % D;                                                   \
            const TY* xr = x + b * sxb + d * sxd;                                                 \
            const TY* dyr = dy + b * sdb + d * sdd;                                               \
            const TY* wr = w + d * W;                                                             \
            const TY bv = bias ? bias[d] : (TY)0;                                                 \
            TY* dxr = dx + r * L;                                                                 \
            TY* dwr = dw + r * W;                                                                 \
            TY dbv = 0;                                                                           \
            for (int64_t k = 0; k < W; ++k) dwr[k] = 0;                                           \
            for (int64_t i = 0; i < nseg; ++i) {                                                  \
                const int64_t s = seg[i], e = seg[i + 1], n = e - s, head = s + K < e ? s + K : e; \
                const int64_t hrow = ((nseg == 1 ? b : i) * D + d) * K;                           \
                const TY* hr = init ? init + hrow : 0;                                            \
                /* o, then do = dy act'(o), into g[0, n) */                                       \
                for (int64_t t = s; t < head; ++t) CONV_HEAD(TY, xr, wr, W, K, bv, hr, s, t, g[t - s]) \
                for (int64_t t0 = head; t0 < e; t0 += TILE) {                                     \
                    const int64_t m = e - t0 < TILE ? e - t0 : TILE;                              \
                    CONV_TILE(TY, acc, xr, wr, W, K, bv, t0, m)                                   \
                    memcpy(g + (t0 - s), acc, sizeof(TY) * m);                                    \
                }                                                                                 \
                const TY* dys = dyr + s;                                                          \
                if (silu) {                                                                       \
                    _Pragma("omp simd")                                                           \
                    for (int64_t j = 0; j < n; ++j) {                                             \
                        const TY o = g[j], sg = (TY)1 / ((TY)1 + EXP(-o));                         \
                        g[j] = dys[j] * sg * ((TY)1 + o * ((TY)1 - sg));                          \
                    }                                                                             \
                } else {                                                                          \
                    for (int64_t j = 0; j < n; ++j) g[j] = dys[j];                                \
                }                                                                                 \
                for (int64_t j = n; j < n + K; ++j) g[j] = 0;                                     \
                /* dbias, dw_k = sum_j g_j xs_{s+j-K+k}: x for j >= K - k, the state before */    \
                TY sb = 0;                                                                        \
                _Pragma("omp simd reduction(+:sb)")                                               \
                for (int64_t j = 0; j < n; ++j) sb += g[j];                                       \
                dbv += sb;                                                                        \
                for (int64_t k = 0; k < W; ++k) {                                                 \
                    const int64_t j0 = K - k < n ? K - k : n;                                     \
                    const TY* xs = xr + s - K + k;                                                \
                    TY sw = 0;                                                                    \
                    if (hr) for (int64_t j = 0; j < j0; ++j) sw += g[j] * hr[j + k];              \
                    _Pragma("omp simd reduction(+:sw)")                                           \
                    for (int64_t j = j0; j < n; ++j) sw += g[j] * xs[j];                          \
                    dwr[k] += sw;                                                                 \
                }                                                                                 \
                /* dx_u = sum_k w_k g_{u-s+K-k} */                                                \
                for (int64_t u0 = 0; u0 < n; u0 += TILE) {                                        \
                    const int64_t m = n - u0 < TILE ? n - u0 : TILE;                              \
                    for (int64_t j = 0; j < m; ++j) acc[j] = 0;                                   \
                    for (int64_t k = 0; k < W; ++k) {                                             \
                        const TY wk = wr[k];                                                      \
                        const TY* gs = g + u0 + K - k;                                            \
                        _Pragma("omp simd")                                                       \
                        for (int64_t j = 0; j < m; ++j) acc[j] += wk * gs[j];                     \
                    }                                                                             \
                    memcpy(dxr + s + u0, acc, sizeof(TY) * m);                                    \
                }                                                                                 \
                /* d initial state: position s - K + jj reaches outputs s .. s + jj */            \
                if (dinit)                                                                        \
                    for (int64_t jj = 0; jj < K; ++jj) {                                          \
                        TY v = 0;                                                                 \
                        for (int64_t k = 0; k <= jj; ++k) v += wr[k] * g[jj - k];                 \
                        dinit[hrow + jj] = v;                                                     \
                    }                                                                             \
            }                                                                                     \
            if (db) db[r] = dbv;                                                                  \
        }                                                                                         \
        free(g);                                                                                  \
    }                                                                                             \
}
DEF_FWD(float, f32, cpu_exp_f32)
DEF_FWD(double, f64, exp)
DEF_BWD(float, f32, cpu_exp_f32)
DEF_BWD(double, f64, exp)
"""

_FWD_ARGS = [PTR, I64, I64, PTR, PTR, PTR, PTR, I64, PTR] + [I64] * 6
_BWD_ARGS = [PTR, I64, I64, PTR, PTR, PTR, PTR, I64, PTR, I64, I64, PTR, PTR, PTR, PTR] + [I64] * 6
KERNEL = CKernel("causal_conv1d", _C_SOURCE, {
    "cc1d_fwd_f32": _FWD_ARGS, "cc1d_fwd_f64": _FWD_ARGS, "cc1d_bwd_f32": _BWD_ARGS, "cc1d_bwd_f64": _BWD_ARGS,
})


def _rows(t: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    """t (B, D, L) in the compute dtype with time contiguous (batch and channel strides kept; the C
    loops read element (b, d, t) at b * stride(0) + d * stride(1) + t). Other layouts (channel-last)
    go through the blocked transposing copy, 2-3x faster than torch's."""
    t = t.to(ct)
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else transpose_copy(t.transpose(1, 2))


def _setup(x, weight, bias, initial_states, cu_seqlens, ct):
    """The library and the C arguments shared by both directions, or None where the loops do not apply."""
    if x.device.type != "cpu" or ct not in (torch.float32, torch.float64) or KERNEL.load() is None:
        return None
    xr = _rows(x, ct)
    w, b = weight.to(ct).contiguous(), None if bias is None else bias.to(ct).contiguous()
    h = None if initial_states is None else initial_states.to(ct).contiguous()
    L = x.shape[-1]
    seg = (torch.tensor([0, L], dtype=torch.int64) if cu_seqlens is None
           else cu_seqlens.to(device="cpu", dtype=torch.int64).contiguous())
    lib = KERNEL.load_for(w, b, h)
    return None if lib is None else (lib, xr, w, b, h, seg)


def conv_fwd(x, weight, bias, initial_states, cu_seqlens, activation: str, ct) -> torch.Tensor | None:
    """y (B, D, L) in the compute dtype ``ct``, or None where the fused loop does not apply."""
    s = _setup(x, weight, bias, initial_states, cu_seqlens, ct)
    if s is None:
        return None
    lib, xr, w, b, h, seg = s
    B, D, L = x.shape
    y = torch.empty(B, D, L, dtype=ct)
    fn = lib.cc1d_fwd_f64 if ct == torch.float64 else lib.cc1d_fwd_f32
    fn(ptr(xr, strided=True), xr.stride(0), xr.stride(1), ptr(w), ptr(b), ptr(h), ptr(seg), seg.numel() - 1,
       ptr(y), B, D, L, w.shape[1], int(bool(activation)), torch.get_num_threads())
    return y


def conv_bwd(dy, x, weight, bias, initial_states, cu_seqlens, activation: str, ct):
    """(dx, dweight, dbias or None, dinitial_states or None) in the compute dtype, or None where the
    fused loop does not apply."""
    s = _setup(x, weight, bias, initial_states, cu_seqlens, ct)
    if s is None:
        return None
    lib, xr, w, b, h, seg = s
    B, D, L = x.shape
    W = w.shape[1]
    g = _rows(dy, ct)
    dx = torch.empty(B, D, L, dtype=ct)
    dw = torch.empty(B, D, W, dtype=ct)
    db = None if b is None else torch.empty(B, D, dtype=ct)
    dh = None if h is None else torch.empty_like(h)
    fn = lib.cc1d_bwd_f64 if ct == torch.float64 else lib.cc1d_bwd_f32
    fn(ptr(xr, strided=True), xr.stride(0), xr.stride(1), ptr(w), ptr(b), ptr(h), ptr(seg), seg.numel() - 1,
       ptr(g, strided=True), g.stride(0), g.stride(1), ptr(dx),
       ptr(dw), ptr(db), ptr(dh), B, D, L, W, int(bool(activation)), torch.get_num_threads())
    return dx, dw.sum(0), None if db is None else db.sum(0), dh
