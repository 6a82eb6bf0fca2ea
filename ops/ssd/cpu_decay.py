"""SSD intra-chunk matrices on CPU as one fused C loop (ops/_cpu_jit), with None returned where the
caller keeps its pure-torch path (no compiler, CUDA tensors, other dtypes).

Per row (one chunk of one head) with in-chunk cumulative decays s_0 .. s_{Q-1} (cpu.py):

    out_ij = exp(max(s_i - s_j, floor)) * CB_ij * w_j  (+ d on the diagonal)   for j <= i,   0 for j > i

CB (C B^T of the chunk and the head's group), the column scales w (dt'_j of the row's head) and the
diagonal d (the head's D) are each optional: the forward's Y_intra = (C B^T * L) Xdt + D x becomes
one matmul of this matrix with x, the backward asks for L alone. The torch path needs five passes
over the (.., Q, Q) temporary (difference, mask, clamp, exp, mask) and one per factor; here each
entry is written once and only the Q (Q + 1) / 2 entries on and below the diagonal are
exponentiated. float32 uses the vectorised exp of ``_cpu_math``, float64 libm's exp.
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, F64, I64, PTR, ptr
from .._cpu_math import EXP_F32_SOURCE

__all__ = ["decay_mask"]

_C_SOURCE = EXP_F32_SOURCE + r"""
#ifdef _OPENMP
#include <omp.h>
#endif
/* s, w: (rows, Q), row = chunk * H + head; cb: (rows / H * G, Q, Q), G = H / R groups of R heads; d: (H,);
   out: (rows, Q, Q). cb, w, d may be NULL. */
#define DEF_DECAY(TY, SUF, EXP)                                                                   \
void ssd_decay_##SUF(const TY* s, const TY* cb, const TY* w, const TY* d, TY* out, int64_t rows,  \
                     int64_t Q, int64_t H, int64_t R, double floor_, int64_t nthreads) {         \
    const TY lo = (TY)floor_;                                                                     \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if (rows * Q * Q > 65536)") \
    for (int64_t r = 0; r < rows; ++r) {                                                          \
        const TY* sr = s + r * Q;                                                                 \
        const TY* c = cb ? cb + ((r / H) * (H / R) + (r % H) / R) * Q * Q : 0;                    \
        const TY* wr = w ? w + r * Q : 0;                                                         \
        TY* o = out + r * Q * Q;                                                                  \
        for (int64_t i = 0; i < Q; ++i) {                                                         \
            const TY si = sr[i];                                                                  \
            const TY* ci = c ? c + i * Q : 0;                                                     \
            TY* oi = o + i * Q;                                                                   \
            _Pragma("omp simd")                                                                   \
            for (int64_t j = 0; j <= i; ++j) {                                                    \
                TY v = si - sr[j];                                                                \
                v = v < lo ? lo : v;                                                              \
                TY e = EXP(v);                                                                    \
                if (ci) e *= ci[j];                                                               \
                if (wr) e *= wr[j];                                                               \
                oi[j] = e;                                                                        \
            }                                                                                     \
            if (d) oi[i] += d[r % H];                                                             \
            for (int64_t j = i + 1; j < Q; ++j) oi[j] = 0;                                        \
        }                                                                                         \
    }                                                                                             \
}
DEF_DECAY(float, f32, cpu_exp_f32)
DEF_DECAY(double, f64, exp)
"""

_ARGS = [PTR] * 5 + [I64] * 4 + [F64, I64]
KERNEL = CKernel("ssd_decay", _C_SOURCE, {"ssd_decay_f32": _ARGS, "ssd_decay_f64": _ARGS})


def decay_mask(s: torch.Tensor, floor: float, cb: torch.Tensor | None = None, R: int = 1,
               w: torch.Tensor | None = None, d: torch.Tensor | None = None) -> torch.Tensor | None:
    """s: (.., H, Q) contiguous in-chunk cumulative decays; cb: (.., G, Q, Q) with the same leading
    dims (G = H / R); w: like s; d: (H,); each optional, all contiguous and of s's dtype. Returns the
    (.., H, Q, Q) matrices of the module docstring, or None where the fused loop does not apply (the
    caller's torch path runs)."""
    lib = KERNEL.load_for(s, cb, w, d)
    if lib is None:
        return None
    H, Q = s.shape[-2:]
    out = s.new_empty(*s.shape, Q)
    fn = lib.ssd_decay_f64 if s.dtype == torch.float64 else lib.ssd_decay_f32
    fn(ptr(s), ptr(cb), ptr(w), ptr(d), ptr(out), s.numel() // Q, Q, H, R, float(floor), torch.get_num_threads())
    return out
