"""One decode step of the selective scan on CPU as one fused C loop (ops/_cpu_jit), in place.

Per batch row b and channel d (group g of B and C), the equations of ``state_update.py``:

    dl = [softplus](dt + dt_bias);  h[n] = exp(dl A[d, n]) h[n] + dl x B[g, n];  y = (sum_n C[g, n] h[n] + D x) [* silu(z)]

One pass over the state, written in place, instead of eight torch passes over (batch, dim, N)
temporaries. A is read with its strides: an A expanded over N (stride 0, Mamba-2's one decay per
head, ``A[:, None].expand(H * P, N)``) takes one exp per channel instead of N. Used when no gradient is
needed (the torch step is the differentiable one) and the state is a contiguous float32 / float64
CPU tensor of the compute dtype; ``step`` returns None otherwise.
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, I64, PTR, ptr
from .._cpu_math import EXP_F32_SOURCE

__all__ = ["step"]

_C_SOURCE = EXP_F32_SOURCE + r"""
#ifdef _OPENMP
#include <omp.h>
#endif
/* state: (batch, dim, N) contiguous, updated in place; x, dt, z, y: (batch, dim); A: element (d, n) at
   A[d * sad + n * san]; B: (batch, GB, N), C: (batch, GC, N); D, dt_bias: (dim,) or NULL; z NULL without the gate */
#define DEF_UPDATE(TY, SUF, EXP, LOG1P)                                                            \
void ss_update_##SUF(TY* state, const TY* x, const TY* dt, const TY* A, int64_t sad, int64_t san,  \
                     const TY* B, const TY* C, const TY* D, const TY* z, const TY* dt_bias,        \
                     int64_t softplus, TY* y, int64_t batch, int64_t dim, int64_t N, int64_t GB,   \
                     int64_t GC, int64_t nthreads) {                                               \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(nthreads) if (batch * dim * N > 65536)") \
    for (int64_t b = 0; b < batch; ++b)                                                           \
        for (int64_t d = 0; d < dim; ++d) {                                                       \
            const int64_t row = b * dim + d;                                                      \
            TY dl = dt[row] + (dt_bias ? dt_bias[d] : (TY)0);                                     \
            if (softplus) dl = dl > (TY)20 ? dl : LOG1P(EXP(dl));                                 \
            const TY xv = x[row], dlx = dl * xv;                                                  \
            TY* h = state + row * N;                                                              \
            const TY* Bg = B + (b * GB + d / (dim / GB)) * N;                                     \
            const TY* Cg = C + (b * GC + d / (dim / GC)) * N;                                     \
            const TY* Ad = A + d * sad;                                                           \
            TY acc = 0;                                                                           \
            if (san == 0) {                                   /* one decay for the row */         \
                const TY a = EXP(dl * Ad[0]);                                                     \
                _Pragma("omp simd reduction(+:acc)")                                              \
                for (int64_t n = 0; n < N; ++n) { const TY v = a * h[n] + dlx * Bg[n]; h[n] = v; acc += Cg[n] * v; } \
            } else if (san == 1) {                            /* contiguous: vectorised exps */    \
                _Pragma("omp simd reduction(+:acc)")                                              \
                for (int64_t n = 0; n < N; ++n) {                                                 \
                    const TY v = EXP(dl * Ad[n]) * h[n] + dlx * Bg[n]; h[n] = v; acc += Cg[n] * v; \
                }                                                                                 \
            } else {                                                                              \
                for (int64_t n = 0; n < N; ++n) {                                                 \
                    const TY v = EXP(dl * Ad[n * san]) * h[n] + dlx * Bg[n]; h[n] = v; acc += Cg[n] * v; \
                }                                                                                 \
            }                                                                                     \
            TY out = acc + (D ? D[d] * xv : (TY)0);                                               \
            if (z) { const TY zz = z[row]; out *= zz / ((TY)1 + EXP(-zz)); }                      \
            y[row] = out;                                                                         \
        }                                                                                         \
}
DEF_UPDATE(float, f32, cpu_exp_f32, log1pf)
DEF_UPDATE(double, f64, exp, log1p)
"""

_ARGS = [PTR] * 4 + [I64] * 2 + [PTR] * 5 + [I64, PTR] + [I64] * 6
KERNEL = CKernel("selective_state_update", _C_SOURCE, {"ss_update_f32": _ARGS, "ss_update_f64": _ARGS})


def step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus: bool, cd: torch.dtype):
    """state (batch, dim, N) updated in place; returns y (batch, dim) in ``cd``, or None where the fused loop
    does not apply (then nothing is touched). B, C: (batch, N) or (batch, G, N)."""
    if state.dtype != cd or not state.is_contiguous() or state.device.type != "cpu":
        return None
    batch, dim, N = state.shape
    small = [None if t is None else t.to(cd).contiguous() for t in (x, dt, D, z, dt_bias)]
    Bc, Cc = (t.to(cd).reshape(batch, -1, N).contiguous() for t in (B, C))        # (batch, G, N)
    Ac = A.to(cd)
    lib = KERNEL.load_for(state, *small, Bc, Cc)
    if lib is None or Ac.device.type != "cpu":
        return None
    x_, dt_, D_, z_, db_ = small
    y = torch.empty(batch, dim, dtype=cd)
    fn = lib.ss_update_f64 if cd == torch.float64 else lib.ss_update_f32
    fn(ptr(state), ptr(x_), ptr(dt_), ptr(Ac, strided=True), Ac.stride(0), Ac.stride(1), ptr(Bc), ptr(Cc), ptr(D_),
       ptr(z_), ptr(db_), int(dt_softplus), ptr(y), batch, dim, N, Bc.shape[1], Cc.shape[1], torch.get_num_threads())
    return y
