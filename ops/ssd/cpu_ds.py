"""The SSD backward's per-token sums over the head channel p, for one block of chunks, as one fused C
loop (ops/_cpu_jit), with None returned where the caller keeps its torch path (no compiler, CUDA
tensors, other dtypes, strided inputs).

With U = B dS_c' (the state gradient brought back to the tokens, before the decay w), xw = w dt' x
and y_pre the forward's ungated output (notation of cpu.py and cpu_bwd.py), per token i and head h:

    t_ih  = sum_p U_ihp xw_ihp                                 (the chunk state's part of ds)
    ds_ih = sum_p dY_ihp (y_pre_ihp - D_hp x_ihp) - t_ih       (Y_inter + Y_intra as the later index)
    U_ihp *= w_ih                                              (-> its part of dXdt)

One pass over the block replaces seven in torch (D x, y_pre - D x, two products and two sums, the w
scale); t comes back for ds_end = sum over the chunk of t.
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, I64, PTR, ptr

__all__ = ["block_ds"]

_C_SOURCE = r"""
#ifdef _OPENMP
#include <omp.h>
#endif
/* U, xw: (S, K, Q, H, P), w, ds, t: (S, K, Q, H) contiguous blocks; dy, yp, x: chunk k of row s at
   (s * ss + k) * Q * H * P (ss: chunks per row of the full tensors); D: (H, DP), DP = 1 or P, or NULL */
#define DEF_DS(TY, SUF)                                                                           \
void ssd_ds_##SUF(TY* U, const TY* xw, const TY* w, const TY* dy, const TY* yp, const TY* x,      \
                  const TY* D, int64_t DP, TY* ds, TY* t, int64_t S, int64_t K, int64_t ss,        \
                  int64_t Q, int64_t H, int64_t P, int64_t nthreads) {                             \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(nthreads) if (S * K * Q * H * P > 65536)") \
    for (int64_t sk = 0; sk < S * K; ++sk)                                                        \
        for (int64_t q = 0; q < Q; ++q) {                                                         \
            const int64_t s = sk / K, k = sk % K, tok = sk * Q + q;                               \
            const int64_t full = (s * ss + k) * Q + q;              /* token (s, k, q) in dy, yp, x */ \
            for (int64_t h = 0; h < H; ++h) {                                                     \
                TY* u = U + (tok * H + h) * P;                                                    \
                const TY* xr = xw + (tok * H + h) * P;                                            \
                const TY* g = dy + (full * H + h) * P;                                            \
                const TY* y = yp + (full * H + h) * P;                                            \
                const TY* xx = x + (full * H + h) * P;                                            \
                const TY wh = w[tok * H + h];                                                     \
                TY a = 0, b = 0;                                                                  \
                if (D && DP > 1) {                                                                \
                    const TY* Dh = D + h * P;                                                     \
                    _Pragma("omp simd reduction(+:a, b)")                                         \
                    for (int64_t p = 0; p < P; ++p) { a += g[p] * (y[p] - Dh[p] * xx[p]); b += u[p] * xr[p]; u[p] *= wh; } \
                } else if (D) {                                                                   \
                    const TY Dh = D[h];                                                           \
                    _Pragma("omp simd reduction(+:a, b)")                                         \
                    for (int64_t p = 0; p < P; ++p) { a += g[p] * (y[p] - Dh * xx[p]); b += u[p] * xr[p]; u[p] *= wh; } \
                } else {                                                                          \
                    _Pragma("omp simd reduction(+:a, b)")                                         \
                    for (int64_t p = 0; p < P; ++p) { a += g[p] * y[p]; b += u[p] * xr[p]; u[p] *= wh; } \
                }                                                                                 \
                ds[tok * H + h] = a - b;                                                          \
                t[tok * H + h] = b;                                                               \
            }                                                                                     \
        }                                                                                         \
}
DEF_DS(float, f32)
DEF_DS(double, f64)
"""

_ARGS = [PTR] * 7 + [I64] + [PTR] * 2 + [I64] * 7
KERNEL = CKernel("ssd_ds", _C_SOURCE, {"ssd_ds_f32": _ARGS, "ssd_ds_f64": _ARGS})


def block_ds(U, xw, w, dy, yp, x, D, c0: int):
    """U, xw: (S, K, Q, H, P), w: (S, K, Q, H) blocks; dy, yp, x: full (S, Cs, Q, H, P), read at chunks
    c0 .. c0 + K - 1; D: (H, 1) | (H, P) | None. Scales U by w in place and returns (ds, t), each
    (S, K, Q, H); None where the fused loop does not apply."""
    lib = KERNEL.load_for(U, xw, w, dy, yp, x, D)
    if lib is None:
        return None
    S, K, Q, H, P = U.shape
    Cs = dy.shape[1]
    ds, t = w.new_empty(S, K, Q, H), w.new_empty(S, K, Q, H)
    c = c0 * Q * H * P                                                              # chunk c0 of row 0
    fn = lib.ssd_ds_f64 if U.dtype == torch.float64 else lib.ssd_ds_f32
    fn(ptr(U), ptr(xw), ptr(w), ptr(dy, offset=c), ptr(yp, offset=c), ptr(x, offset=c), ptr(D),
       0 if D is None else D.shape[1], ptr(ds), ptr(t), S, K, Cs, Q, H, P, torch.get_num_threads())
    return ds, t
