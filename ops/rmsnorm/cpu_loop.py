"""RMSNorm on CPU as fused C loops (ops/_cpu_jit): one pass per row for the forward, two over each
group (in cache) for the backward; ``None`` is returned where the caller keeps its torch path (no
compiler, CUDA tensors, dtypes other than float32/float64).

Same equations as ``cpu.py`` (rows of D channels, groups of N, gate g = silu(z), s = sigmoid(z)):

    u = x (or x g, gate before the norm);  r = 1 / sqrt(mean_group(u^2) + eps);  n = u r
    y = n w (times g when the norm comes before the gate)
    dn = dy w (dy g w with the gate after the norm);  du = r (dn - n mean_group(dn n))
    dw = sum_rows dy n (dy n g);  dz = dgate s (1 + z (1 - s)),  dgate = dy n w | du x;  dx = du | du g

The torch path takes 10-15 passes over (rows, D) temporaries for the backward; here each row is read
once from memory (its second pass over a group hits the cache), dw is summed per thread.
float32 uses the vectorised exp of ``_cpu_math``.
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, F64, I64, PTR, ptr
from .._cpu_transpose import transpose_copy
from .._cpu_math import EXP_F32_SOURCE

__all__ = ["norm_fwd", "norm_bwd"]

_C_SOURCE = EXP_F32_SOURCE + r"""
#ifdef _OPENMP
#include <omp.h>
#define OMP_TID(t) t = omp_get_thread_num();
#else
#define OMP_TID(t)
#endif
/* One group of N channels. HAS_W: affine weight; GATE: 0 none, 1 norm before the gate, 2 gate before the norm.
   Called with literal flags, so each case is its own branch-free simd loop (a gate branch left inside a loop
   would be if-converted: the exp and its divisions computed for every element, gated or not). */
#define DEF_GROUP(TY, SUF, EXP)                                                                   \
static inline __attribute__((always_inline)) TY silu_##SUF(TY v) { return v / ((TY)1 + EXP(-v)); } \
static inline __attribute__((always_inline)) void fwd_group_##SUF(                                \
        const TY* xr, const TY* wr, const TY* zr, TY* yr, TY* rp, int64_t N, TY eps, const int HAS_W, \
        const int GATE) {                                                                         \
    TY ss = 0;                                                                                    \
    if (GATE == 2) {                                               /* u = x silu(z), kept in y */ \
        _Pragma("omp simd reduction(+:ss)")                                                       \
        for (int64_t c = 0; c < N; ++c) { const TY u = xr[c] * silu_##SUF(zr[c]); yr[c] = u; ss += u * u; } \
    } else {                                                                                      \
        _Pragma("omp simd reduction(+:ss)")                                                       \
        for (int64_t c = 0; c < N; ++c) ss += xr[c] * xr[c];                                      \
    }                                                                                             \
    const TY r = (TY)1 / sqrt(ss / (TY)N + eps);                                                  \
    *rp = r;                                                                                      \
    const TY* ur = GATE == 2 ? yr : xr;                                                           \
    _Pragma("omp simd")                                                                           \
    for (int64_t c = 0; c < N; ++c) {                                                             \
        TY v = ur[c] * r;                                                                         \
        if (HAS_W) v *= wr[c];                                                                    \
        if (GATE == 1) v *= silu_##SUF(zr[c]);                                                    \
        yr[c] = v;                                                                                \
    }                                                                                             \
}                                                                                                 \
static inline __attribute__((always_inline)) void bwd_group_##SUF(                                \
        const TY* gr, const TY* xr, const TY* wr, const TY* zr, TY r, TY* dxr, TY* dzr, TY* dwg, int64_t N, \
        const int HAS_W, const int GATE) {                                                        \
    TY sdn = 0;                                              /* pass 1: sum dn n, dw += dy_eff n */ \
    _Pragma("omp simd reduction(+:sdn)")                                                          \
    for (int64_t c = 0; c < N; ++c) {                                                             \
        TY u = xr[c], de = gr[c];                                                                 \
        if (GATE == 1) de *= silu_##SUF(zr[c]);                                                   \
        if (GATE == 2) u *= silu_##SUF(zr[c]);                                                    \
        const TY n = u * r;                                                                       \
        if (HAS_W) { dwg[c] += de * n; de *= wr[c]; }                                             \
        sdn += de * n;                                                                            \
    }                                                                                             \
    const TY mean = sdn / (TY)N;                                                                  \
    _Pragma("omp simd")                                      /* pass 2: du, dx, dz */             \
    for (int64_t c = 0; c < N; ++c) {                                                             \
        TY u = xr[c], de = gr[c], s = 0, gt = 1;                                                  \
        if (GATE) { s = (TY)1 / ((TY)1 + EXP(-zr[c])); gt = zr[c] * s; }                          \
        if (GATE == 1) de *= gt;                                                                  \
        if (GATE == 2) u *= gt;                                                                   \
        const TY n = u * r, wc = HAS_W ? wr[c] : (TY)1;                                           \
        const TY du = r * (de * wc - n * mean);                                                   \
        if (GATE) {                                                                               \
            const TY dgate = GATE == 1 ? gr[c] * n * wc : du * xr[c];                             \
            dzr[c] = dgate * s * ((TY)1 + zr[c] * ((TY)1 - s));                                   \
        }                                                                                         \
        dxr[c] = GATE == 2 ? du * gt : du;                                                        \
    }                                                                                             \
}
/* the group function for the runtime flags, each call with literal ones */
#define DISPATCH(FN, HAS_W, GATE, ...)                                                            \
    if (HAS_W) { if (GATE == 0) FN(__VA_ARGS__, 1, 0); else if (GATE == 1) FN(__VA_ARGS__, 1, 1); else FN(__VA_ARGS__, 1, 2); } \
    else { if (GATE == 0) FN(__VA_ARGS__, 0, 0); else if (GATE == 1) FN(__VA_ARGS__, 0, 1); else FN(__VA_ARGS__, 0, 2); }
/* x, z, y: (M, D) contiguous, z may be NULL; w: (D,) or NULL; rstd: (M, D / N). before: norm before the gate */
#define DEF_FWD(TY, SUF)                                                                          \
void rms_fwd_##SUF(const TY* x, const TY* w, const TY* z, TY* y, TY* rstd, int64_t M, int64_t D,  \
                   int64_t N, double eps, int64_t before, int64_t nthreads) {                     \
    const int64_t G = D / N;                                                                      \
    const int gate = z ? (before ? 1 : 2) : 0, has_w = w != 0;                                    \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if (M * D > 65536)")         \
    for (int64_t m = 0; m < M; ++m)                                                               \
        for (int64_t gi = 0; gi < G; ++gi) {                                                      \
            const int64_t o = m * D + gi * N;                                                     \
            DISPATCH(fwd_group_##SUF, has_w, gate, x + o, w ? w + gi * N : 0, z ? z + o : 0, y + o, \
                     rstd + m * G + gi, N, (TY)eps)                                               \
        }                                                                                         \
}
/* dy, x, z, dx, dz: (M, D) contiguous (z, dz may be NULL); w: (D,) or NULL; rstd (M, D / N);
   dwp: (nthreads, D) zeroed, thread t adds its rows' dw into row t (NULL without w) */
#define DEF_BWD(TY, SUF)                                                                          \
void rms_bwd_##SUF(const TY* dy, const TY* x, const TY* w, const TY* z, const TY* rstd, TY* dx,   \
                   TY* dz, TY* dwp, int64_t M, int64_t D, int64_t N, int64_t before, int64_t nthreads) { \
    const int64_t G = D / N;                                                                      \
    const int gate = z ? (before ? 1 : 2) : 0, has_w = w != 0;                                    \
    _Pragma("omp parallel num_threads(nthreads) if (M * D > 65536)")                              \
    {                                                                                             \
        int64_t tid = 0;                                                                          \
        OMP_TID(tid)                                                                              \
        TY* dwr = dwp ? dwp + tid * D : 0;                                                        \
        _Pragma("omp for schedule(static)")                                                       \
        for (int64_t m = 0; m < M; ++m)                                                           \
            for (int64_t gi = 0; gi < G; ++gi) {                                                  \
                const int64_t o = m * D + gi * N;                                                 \
                DISPATCH(bwd_group_##SUF, has_w, gate, dy + o, x + o, w ? w + gi * N : 0, z ? z + o : 0, \
                         rstd[m * G + gi], dx + o, dz ? dz + o : 0, dwr ? dwr + gi * N : 0, N)    \
            }                                                                                     \
    }                                                                                             \
}
DEF_GROUP(float, f32, cpu_exp_f32)
DEF_GROUP(double, f64, exp)
DEF_FWD(float, f32)
DEF_FWD(double, f64)
DEF_BWD(float, f32)
DEF_BWD(double, f64)
"""

_FWD_ARGS = [PTR] * 5 + [I64] * 3 + [F64] + [I64] * 2
_BWD_ARGS = [PTR] * 8 + [I64] * 5
KERNEL = CKernel("rms_norm", _C_SOURCE, {"rms_fwd_f32": _FWD_ARGS, "rms_fwd_f64": _FWD_ARGS,
                                         "rms_bwd_f32": _BWD_ARGS, "rms_bwd_f64": _BWD_ARGS})


def _rows(t: torch.Tensor | None, ct: torch.dtype) -> torch.Tensor | None:
    """(M, D) contiguous rows. A 3-D tensor whose channels are not unit-stride (e.g. a (B, D, T) scan
    output viewed as (B, T, D), as Hymba normalises Mamba's output) goes through the blocked
    transposing copy: torch's copy took 20 ms for a (2048, 1536) one on 2 threads."""
    if t is None:
        return None
    t = t.to(ct)
    if t.dim() == 3 and t.shape[-1] > 1 and t.stride(-1) != 1:
        t = transpose_copy(t.transpose(1, 2))
    return t.reshape(-1, t.shape[-1]).contiguous()


def norm_fwd(x, weight, z, eps: float, norm_before_gate: bool, group_size: int, ct):
    """(y (M, D), rstd (M, D // group_size)) in ``ct``, or None where the fused loop does not apply."""
    if x.device.type != "cpu" or ct not in (torch.float32, torch.float64) or KERNEL.load() is None:
        return None
    xr, zr = _rows(x, ct), _rows(z, ct)
    w = None if weight is None else weight.to(ct).contiguous()
    lib = KERNEL.load_for(xr, zr, w)
    if lib is None:
        return None
    M, D = xr.shape
    y = torch.empty(M, D, dtype=ct)
    rstd = torch.empty(M, D // group_size if D else 0, dtype=ct)
    fn = lib.rms_fwd_f64 if ct == torch.float64 else lib.rms_fwd_f32
    fn(ptr(xr), ptr(w), ptr(zr), ptr(y), ptr(rstd), M, D, group_size, float(eps), int(norm_before_gate),
       torch.get_num_threads())
    return y, rstd


def norm_bwd(dy, x, weight, z, rstd, norm_before_gate: bool, group_size: int, ct):
    """(dx (M, D), dweight (D,) or None, dz (M, D) or None) in ``ct``, or None where the fused loop
    does not apply."""
    if x.device.type != "cpu" or ct not in (torch.float32, torch.float64) or KERNEL.load() is None:
        return None
    xr, gr, zr = _rows(x, ct), _rows(dy, ct), _rows(z, ct)
    w = None if weight is None else weight.to(ct).contiguous()
    r = rstd.to(ct).contiguous()
    lib = KERNEL.load_for(xr, gr, zr, w, r)
    if lib is None:
        return None
    M, D = xr.shape
    nth = torch.get_num_threads()
    dx = torch.empty(M, D, dtype=ct)
    dz = None if zr is None else torch.empty(M, D, dtype=ct)
    dwp = None if w is None else torch.zeros(nth, D, dtype=ct)
    fn = lib.rms_bwd_f64 if ct == torch.float64 else lib.rms_bwd_f32
    fn(ptr(gr), ptr(xr), ptr(w), ptr(zr), ptr(r), ptr(dx), ptr(dz), ptr(dwp), M, D, group_size,
       int(norm_before_gate), nth)
    return dx, None if dwp is None else dwp.sum(0), dz
