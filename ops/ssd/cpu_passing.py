"""SSD chunk-state passing on CPU: the sequential part of the chunked algorithm, as one fused C loop
(ops/_cpu_jit) per run of chunks, with a pure-torch fallback (no compiler, or CUDA tensors).

States are kept transposed, (N, R, P) per group (cpu.py). Per row (group g, layout row s) and chunk j:

    forward:   H_j = carry;   carry = dec_j * H_j + S_j            (H_j: state entering chunk j)
    backward:  dS_j = carry;  dH_j += dec_j * dS_j;  carry = dH_j  (j descending; dS_j: gradient of the
                                                                    state leaving chunk j)

dec_j = exp(s_end) per head r. A run never contains a sequence start after its first chunk (the
caller splits at starts and sets the carry to the initial state / the final-state gradient).
One call replaces 2-3 small torch ops per chunk, which matter on a loaded machine (each op is a
fork/join of the intra-op thread pool). OpenMP-parallel over (row, n); the inner (r, p) loop is
contiguous.
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, I64, PTR, ptr

__all__ = ["pass_fwd", "pass_bwd", "state_dot"]

_C_SOURCE = r"""
#define PAR_MIN 65536
/* St: (rows, Kb, N*R*P) block; dec: (rows, Kb, R); Hts: (rows, Csf, N*R*P), chunk j at column hoff + j;
   carry: (rows, N*R*P) in/out. Chunks j0 .. j1-1. */
#define DEF_FWD(TY, SUF)                                                                          \
void ssd_pass_fwd_##SUF(const TY* St, const TY* dec, TY* Hts, TY* carry, int64_t rows, int64_t Kb, \
                        int64_t j0, int64_t j1, int64_t Csf, int64_t hoff, int64_t N, int64_t R,    \
                        int64_t P) {                                                              \
    int64_t RP = R * P, NRP = N * RP;                                                             \
    _Pragma("omp parallel for collapse(2) schedule(static) if (rows * NRP * (j1 - j0) > PAR_MIN)") \
    for (int64_t a = 0; a < rows; ++a)                                                            \
        for (int64_t n = 0; n < N; ++n) {                                                         \
            TY* cr = carry + a * NRP + n * RP;                                                    \
            for (int64_t j = j0; j < j1; ++j) {                                                   \
                const TY* st = St + (a * Kb + j) * NRP + n * RP;                                  \
                const TY* dj = dec + (a * Kb + j) * R;                                            \
                TY* h = Hts + (a * Csf + hoff + j) * NRP + n * RP;                                \
                for (int64_t r = 0; r < R; ++r) {                                                 \
                    TY d = dj[r];                                                                 \
                    for (int64_t p = r * P; p < (r + 1) * P; ++p) {                               \
                        TY c = cr[p]; h[p] = c; cr[p] = d * c + st[p];                            \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
}
/* dHt, dSt: (rows, Kb, N*R*P) block; dec: (rows, Kb, R); carry in/out. Chunks j1-1 down to j0. */
#define DEF_BWD(TY, SUF)                                                                          \
void ssd_pass_bwd_##SUF(const TY* dec, TY* dHt, TY* dSt, TY* carry, int64_t rows, int64_t Kb,      \
                        int64_t j0, int64_t j1, int64_t N, int64_t R, int64_t P) {                \
    int64_t RP = R * P, NRP = N * RP;                                                             \
    _Pragma("omp parallel for collapse(2) schedule(static) if (rows * NRP * (j1 - j0) > PAR_MIN)") \
    for (int64_t a = 0; a < rows; ++a)                                                            \
        for (int64_t n = 0; n < N; ++n) {                                                         \
            TY* cr = carry + a * NRP + n * RP;                                                    \
            for (int64_t j = j1 - 1; j >= j0; --j) {                                              \
                const TY* dj = dec + (a * Kb + j) * R;                                            \
                TY* dh = dHt + (a * Kb + j) * NRP + n * RP;                                       \
                TY* ds = dSt + (a * Kb + j) * NRP + n * RP;                                       \
                for (int64_t r = 0; r < R; ++r) {                                                 \
                    TY d = dj[r];                                                                 \
                    for (int64_t p = r * P; p < (r + 1) * P; ++p) {                               \
                        TY c = cr[p]; ds[p] = c; c = dh[p] + d * c; dh[p] = c; cr[p] = c;         \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
}
/* Hts: (rows, Csf, N*R*P), block chunk j at column hoff + j; dSt: (rows, Kb, N*R*P); dec, out: (rows, Kb, R):
   out = dec * sum over n, p of H dS, per row, chunk and head (one pass, no (N, R, P) product) */
#define DEF_DOT(TY, SUF)                                                                          \
void ssd_state_dot_##SUF(const TY* Hts, const TY* dSt, const TY* dec, TY* out, int64_t rows,      \
                         int64_t Kb, int64_t Csf, int64_t hoff, int64_t N, int64_t R, int64_t P) { \
    int64_t RP = R * P, NRP = N * RP;                                                             \
    _Pragma("omp parallel for collapse(3) schedule(static) if (rows * Kb * NRP > PAR_MIN)")       \
    for (int64_t a = 0; a < rows; ++a)                                                            \
        for (int64_t j = 0; j < Kb; ++j)                                                          \
            for (int64_t r = 0; r < R; ++r) {                                                     \
                const TY* h = Hts + (a * Csf + hoff + j) * NRP + r * P;                           \
                const TY* ds = dSt + (a * Kb + j) * NRP + r * P;                                  \
                TY acc = 0;                                                                       \
                for (int64_t n = 0; n < N; ++n) {                                                 \
                    _Pragma("omp simd reduction(+:acc)")                                          \
                    for (int64_t p = 0; p < P; ++p) acc += h[n * RP + p] * ds[n * RP + p];        \
                }                                                                                 \
                out[(a * Kb + j) * R + r] = dec[(a * Kb + j) * R + r] * acc;                      \
            }                                                                                     \
}
DEF_FWD(float, f32)
DEF_FWD(double, f64)
DEF_BWD(float, f32)
DEF_BWD(double, f64)
DEF_DOT(float, f32)
DEF_DOT(double, f64)
"""

_FWD_ARGS = [PTR, PTR, PTR, PTR] + [I64] * 9
_BWD_ARGS = [PTR, PTR, PTR, PTR] + [I64] * 7
_DOT_ARGS = [PTR, PTR, PTR, PTR] + [I64] * 7
KERNEL = CKernel("ssd_passing", _C_SOURCE, {
    "ssd_pass_fwd_f32": _FWD_ARGS, "ssd_pass_fwd_f64": _FWD_ARGS,
    "ssd_pass_bwd_f32": _BWD_ARGS, "ssd_pass_bwd_f64": _BWD_ARGS,
    "ssd_state_dot_f32": _DOT_ARGS, "ssd_state_dot_f64": _DOT_ARGS,
})


def _suffix(t: torch.Tensor) -> str:
    return "f64" if t.dtype == torch.float64 else "f32"


def pass_fwd(St, dec, Hts, carry, j0: int, j1: int, hoff: int) -> None:
    """St: (G, S, K, N, R, P) block states; dec: (G, S, K, R); Hts: (G, S, Cs, N, R, P) written at
    chunks hoff + j0 .. hoff + j1 - 1; carry: (G, S, N, R, P), updated in place. All contiguous."""
    G, S, K, N, R, P = St.shape
    lib = KERNEL.load_for(St, dec, Hts, carry)
    if lib is None:
        d = dec[..., None, :, None]                                                  # (G, S, K, 1, R, 1)
        for j in range(j0, j1):
            Hts[:, :, hoff + j] = carry
            carry.mul_(d[:, :, j]).add_(St[:, :, j])
        return
    getattr(lib, "ssd_pass_fwd_" + _suffix(St))(ptr(St), ptr(dec), ptr(Hts), ptr(carry), G * S, K, j0, j1,
                                                Hts.shape[2], hoff, N, R, P)


def pass_bwd(dec, dHt, dSt, carry, j0: int, j1: int) -> None:
    """dHt: (G, S, K, N, R, P) block gradients of the entering states (the inter-chunk part on entry,
    complete on exit); dSt: same shape, written; dec: (G, S, K, R); carry (G, S, N, R, P) in place."""
    G, S, K, N, R, P = dHt.shape
    lib = KERNEL.load_for(dHt, dec, dSt, carry)
    if lib is None:
        d = dec[..., None, :, None]
        for j in reversed(range(j0, j1)):
            dSt[:, :, j] = carry
            carry.copy_(dHt[:, :, j].addcmul_(carry, d[:, :, j]))
        return
    getattr(lib, "ssd_pass_bwd_" + _suffix(dHt))(ptr(dec), ptr(dHt), ptr(dSt), ptr(carry), G * S, K, j0, j1, N, R, P)


def state_dot(Hts, dSt, dec, c0: int) -> torch.Tensor:
    """ds_end (G, S, K, R) = dec * <H_c, dS_c> over (N, P) per head: Hts (G, S, Cs, N, R, P) read at chunks
    c0 .. c0 + K - 1; dSt (G, S, K, N, R, P); dec (G, S, K, R)."""
    G, S, K, N, R, P = dSt.shape
    lib = KERNEL.load_for(Hts, dSt, dec)
    if lib is None:
        return torch.linalg.vecdot(Hts[:, :, c0:c0 + K], dSt).sum(3).mul_(dec)
    out = dec.new_empty(G, S, K, R)
    getattr(lib, "ssd_state_dot_" + _suffix(dSt))(ptr(Hts), ptr(dSt), ptr(dec), ptr(out), G * S, K, Hts.shape[2],
                                                 c0, N, R, P)
    return out
