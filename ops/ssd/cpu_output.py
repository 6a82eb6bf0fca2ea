"""SSD output of one block of chunks on CPU as one fused C loop (ops/_cpu_jit), with False returned
where the caller keeps its torch path (no compiler, CUDA tensors, other dtypes).

Per token t of a chunk, head h and channel p (cpu.py; Z = C H_c' the inter-chunk matmul in token
layout, Y_intra the intra-chunk matmul in head-major layout, e_t = exp(s_t)):

    y_pre = e_t Z_thp + Y_intra_htp,    y = y_pre silu(z_thp)  (y = y_pre without z)

One pass replaces five in torch (scale, transposed add, silu, product, copy into y): the block's
products are still in cache and y, y_pre go straight to their place in the full outputs. The
backward of the gate is one pass too: d y_pre = dy silu(z), dz = dy y_pre silu'(z) with
silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z))) (torch: silu, silu_backward and two products).
float32 uses the vectorised exp of ``_cpu_math``, float64 libm's exp.
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, I64, PTR, ptr
from .._cpu_math import EXP_F32_SOURCE

__all__ = ["block_output", "gate_backward"]

_C_SOURCE = EXP_F32_SOURCE + r"""
#ifdef _OPENMP
#include <omp.h>
#endif
/* Z: (S, K, Q, H, P) and e: (S, K, Q, H) contiguous; Yh: (S, K, H, Q, P) contiguous; z, y, ypre: chunk k of
   row s at (s * ss + k) * Q * H * P (ss: chunks per row of the full tensors); z, ypre may be NULL */
#define DEF_OUT(TY, SUF, EXP)                                                                     \
void ssd_out_##SUF(const TY* Z, const TY* e, const TY* Yh, const TY* z, TY* y, TY* ypre, int64_t S,  \
                   int64_t K, int64_t ss, int64_t Q, int64_t H, int64_t P, int64_t nthreads) {    \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(nthreads) if (S * K * Q * H * P > 65536)") \
    for (int64_t sk = 0; sk < S * K; ++sk)                                                        \
        for (int64_t q = 0; q < Q; ++q) {                                                         \
            const int64_t s = sk / K, k = sk % K;                                                 \
            const int64_t full = ((s * ss + k) * Q + q) * H * P;       /* token (s, k, q) in y */ \
            for (int64_t h = 0; h < H; ++h) {                                                     \
                const TY eh = e[(sk * Q + q) * H + h];                                            \
                const TY* zr = Z + ((sk * Q + q) * H + h) * P;                                    \
                const TY* ir = Yh + ((sk * H + h) * Q + q) * P;                                   \
                const TY* gr = z ? z + full + h * P : 0;                                          \
                TY* yr = y + full + h * P;                                                        \
                TY* pr = ypre ? ypre + full + h * P : 0;                                          \
                _Pragma("omp simd")                                                               \
                for (int64_t p = 0; p < P; ++p) {                                                 \
                    TY v = eh * zr[p] + ir[p];                                                    \
                    if (pr) pr[p] = v;                                                            \
                    if (gr) { const TY g = gr[p]; v *= g / ((TY)1 + EXP(-g)); }                   \
                    yr[p] = v;                                                                    \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
}
DEF_OUT(float, f32, cpu_exp_f32)
DEF_OUT(double, f64, exp)
/* dy, ypre, z: (n,) in; dpre, dz: (n,) out (dpre may alias dy) */
#define DEF_GATE_BWD(TY, SUF, EXP)                                                                \
void ssd_gate_bwd_##SUF(const TY* dy, const TY* ypre, const TY* z, TY* dpre, TY* dz, int64_t n,  \
                        int64_t nthreads) {                                                       \
    _Pragma("omp parallel for simd schedule(static) num_threads(nthreads) if (n > 65536)")      \
    for (int64_t i = 0; i < n; ++i) {                                                             \
        const TY g = z[i], sg = (TY)1 / ((TY)1 + EXP(-g)), d = dy[i];                            \
        dz[i] = d * ypre[i] * sg * ((TY)1 + g * ((TY)1 - sg));                                    \
        dpre[i] = d * g * sg;                                                                     \
    }                                                                                             \
}
DEF_GATE_BWD(float, f32, cpu_exp_f32)
DEF_GATE_BWD(double, f64, exp)
"""

_ARGS = [PTR] * 6 + [I64] * 7
_GATE_ARGS = [PTR] * 5 + [I64] * 2
KERNEL = CKernel("ssd_output", _C_SOURCE, {"ssd_out_f32": _ARGS, "ssd_out_f64": _ARGS,
                                          "ssd_gate_bwd_f32": _GATE_ARGS, "ssd_gate_bwd_f64": _GATE_ARGS})


def block_output(Z: torch.Tensor, e: torch.Tensor, Yh: torch.Tensor, z: torch.Tensor | None, y: torch.Tensor,
                 ypre: torch.Tensor | None, c0: int) -> bool:
    """Z: (S, K, Q, H, P), e: (S, K, Q, H), Yh: (S, K, H, Q, P), all contiguous; z, y, ypre: the full
    (S, Cs, Q, H, P) tensors (contiguous; z, ypre optional), written at chunks c0 .. c0 + K - 1.
    Returns False where the fused loop does not apply (the caller's torch path runs)."""
    lib = KERNEL.load_for(Z, e, Yh, z, y, ypre)
    if lib is None:
        return False
    S, K, Q, H, P = Z.shape
    Cs = y.shape[1]
    c = c0 * Q * H * P                                                              # chunk c0 of row 0
    fn = lib.ssd_out_f64 if Z.dtype == torch.float64 else lib.ssd_out_f32
    fn(ptr(Z), ptr(e), ptr(Yh), ptr(z, offset=c), ptr(y, offset=c), ptr(ypre, offset=c), S, K, Cs, Q, H, P,
       torch.get_num_threads())
    return True


def gate_backward(dy: torch.Tensor, ypre: torch.Tensor, z: torch.Tensor):
    """y = y_pre silu(z): returns (d y_pre, dz) for the gradient dy of y, all of ypre's shape and dtype
    (dy and z are converted / made contiguous as needed)."""
    dy, z = dy.to(ypre.dtype).contiguous(), z.to(ypre.dtype).contiguous()
    lib = KERNEL.load_for(ypre, dy, z)
    if lib is None:
        return dy * torch.nn.functional.silu(z), torch.ops.aten.silu_backward(dy * ypre, z)
    dpre, dz = torch.empty_like(ypre), torch.empty_like(ypre)
    fn = lib.ssd_gate_bwd_f64 if ypre.dtype == torch.float64 else lib.ssd_gate_bwd_f32
    fn(ptr(dy), ptr(ypre), ptr(z), ptr(dpre), ptr(dz), ypre.numel(), torch.get_num_threads())
    return dpre, dz
