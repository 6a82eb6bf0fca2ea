"""SSD input gradients of one block of chunks on CPU as one fused C loop (ops/_cpu_jit), with False
returned where the caller keeps its torch path (no compiler, CUDA tensors, other dtypes, strided
inputs).

From the gradient dXdt of Xdt = dt' x (cpu_bwd.py), per token t, head h, channel p, with da the
gradient of the in-chunk decay a_t = dt'_t A:

    dx_thp = dt'_th dXdt_thp + D_hp dY_thp,    d dt'_th = sum_p x_thp dXdt_thp + A_h da_th,
    dD_hp += sum_t x_thp dY_thp

One pass over the block replaces six in torch (a product and a sum for d dt', the dt' scale, the D
term, a product and a sum for dD, the copy into dx); dx and d dt' go straight to their place in the
full outputs, dD is summed per thread and added at the end.
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, I64, PTR, ptr

__all__ = ["block_input_grads"]

_C_SOURCE = r"""
#ifdef _OPENMP
#include <omp.h>
#endif
/* dxdt: (S, K, Q, H, P), da: (S, K, Q, H) contiguous blocks; x, dy, dx: chunk k of row s at (s * ss + k) * Q * H * P,
   dt, ddt at (s * ss + k) * Q * H (ss: chunks per row of the full tensors); D: (H, DP), DP = 1 or P, or NULL (then dy,
   dD unused); dD: (H, DP), added to */
#define DEF_GRAD(TY, SUF)                                                                         \
void ssd_grad_in_##SUF(const TY* dxdt, const TY* x, const TY* dy, const TY* dt, const TY* da,     \
                       const TY* A, const TY* D, int64_t DP, TY* dx, TY* ddt, TY* dD, int64_t S,  \
                       int64_t K, int64_t ss, int64_t Q, int64_t H, int64_t P, int64_t nthreads) { \
    _Pragma("omp parallel num_threads(nthreads) if (S * K * Q * H * P > 65536)")                  \
    {                                                                                             \
        TY* part = D ? (TY*)calloc((size_t)(H * DP), sizeof(TY)) : 0;                            \
        _Pragma("omp for collapse(2) schedule(static)")                                           \
        for (int64_t sk = 0; sk < S * K; ++sk)                                                    \
            for (int64_t q = 0; q < Q; ++q) {                                                     \
                const int64_t s = sk / K, k = sk % K, tok = sk * Q + q;                           \
                const int64_t full = (s * ss + k) * Q + q;          /* token (s, k, q) in x, dx */ \
                for (int64_t h = 0; h < H; ++h) {                                                 \
                    const TY* g = dxdt + (tok * H + h) * P;                                       \
                    const TY* xr = x + (full * H + h) * P;                                        \
                    const TY* yr = dy + (full * H + h) * P;                                       \
                    TY* o = dx + (full * H + h) * P;                                              \
                    const TY d = dt[full * H + h];                                                 \
                    TY acc = 0;                                                                   \
                    if (D && DP > 1) {                                                            \
                        const TY* Dh = D + h * P;                                                 \
                        TY* ph = part + h * P;                                                    \
                        _Pragma("omp simd reduction(+:acc)")                                      \
                        for (int64_t p = 0; p < P; ++p) {                                         \
                            acc += xr[p] * g[p]; o[p] = d * g[p] + Dh[p] * yr[p]; ph[p] += xr[p] * yr[p]; \
                        }                                                                         \
                    } else if (D) {                                                               \
                        const TY Dh = D[h];                                                       \
                        TY xy = 0;                                                                \
                        _Pragma("omp simd reduction(+:acc, xy)")                                  \
                        for (int64_t p = 0; p < P; ++p) {                                         \
                            acc += xr[p] * g[p]; o[p] = d * g[p] + Dh * yr[p]; xy += xr[p] * yr[p]; \
                        }                                                                         \
                        part[h] += xy;                                                            \
                    } else {                                                                      \
                        _Pragma("omp simd reduction(+:acc)")                                      \
                        for (int64_t p = 0; p < P; ++p) { acc += xr[p] * g[p]; o[p] = d * g[p]; } \
                    }                                                                             \
                    ddt[full * H + h] = acc + A[h] * da[tok * H + h];                             \
                }                                                                                 \
            }                                                                                     \
        if (D) {                                                                                  \
            _Pragma("omp critical")                                                               \
            for (int64_t i = 0; i < H * DP; ++i) dD[i] += part[i];                                \
            free(part);                                                                           \
        }                                                                                         \
    }                                                                                             \
}
DEF_GRAD(float, f32)
DEF_GRAD(double, f64)
"""

_ARGS = [PTR] * 7 + [I64] + [PTR] * 3 + [I64] * 7
KERNEL = CKernel("ssd_grad", _C_SOURCE, {"ssd_grad_in_f32": _ARGS, "ssd_grad_in_f64": _ARGS})


def block_input_grads(dxdt, x, dy, dt, da, A, D, dx, ddt, dD, c0: int) -> bool:
    """dxdt: (S, K, Q, H, P), da: (S, K, Q, H) blocks; x, dy, dx: full (S, Cs, Q, H, P), dt, ddt: full
    (S, Cs, Q, H), read / written at chunks c0 .. c0 + K - 1; A: (H,); D: (H, 1) | (H, P) | None; dD: (H, P)
    accumulator (summed over p when D is (H, 1)). Returns False where the fused loop does not apply."""
    lib = KERNEL.load_for(dxdt, x, dy, dt, da, A, D, dx, ddt, dD)
    if lib is None:
        return False
    S, K, Q, H, P = dxdt.shape
    Cs = dx.shape[1]
    DP = 0 if D is None else D.shape[1]
    c = c0 * Q * H                                                                  # chunk c0 of row 0, per channel
    # dD accumulates (H, DP): for D (H, 1), column 0 of a (H, P) accumulator would be strided, so add a (H, 1) sum
    acc = dD if DP == P or D is None else torch.zeros(H, 1, dtype=dD.dtype)
    fn = lib.ssd_grad_in_f64 if dxdt.dtype == torch.float64 else lib.ssd_grad_in_f32
    fn(ptr(dxdt), ptr(x, offset=c * P), ptr(dy, offset=c * P), ptr(dt, offset=c), ptr(da), ptr(A), ptr(D), DP,
       ptr(dx, offset=c * P), ptr(ddt, offset=c), ptr(acc) if D is not None else None, S, K, Cs, Q, H, P,
       torch.get_num_threads())
    if acc is not dD:
        dD[:, 0] += acc[:, 0]
    return True
