"""Fast CPU path of ``block_scan``: a fused C loop (ops/_cpu_jit), pure-torch fallback.

    forward:   h_t = A_t @ h_{t-1} + b_t                        (scan order, h_{-1} = h0)
    backward:  g_t = dL/dh_t + A_{t+1}^T @ g_{t+1}               (reverse scan order, g_T = 0)
               dL/db_t = g_t;  dL/dA_t = g_t h_{t-1}^T;  dL/dh0 = A_0^T g_0

Tensors here are flattened and contiguous: A (B, T, D, K, K), b, h, grads (B, T, D, K), h0 (B, D, K),
in the state dtype (float32 or float64). The C loop walks time sequentially, OpenMP-parallel over
(batch, block of BS_CH channels); K = 1..4 are compiled with K constant (fully unrolled small
mat-vecs), any other K runs the same code with K a runtime value. The forward reads h_{t-1} back
from the output and the backward keeps g_t in db, so no scratch state is needed. Without a
compiler the shared pure-torch chunked scan (``linear_scan/chunked.py``) runs with matrix products.
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, I64, PTR, ptr
from ..linear_scan import chunked
from ..linear_scan.cpu import to_state_dtype, c_suffix

__all__ = ["block_scan_fwd", "block_scan_bwd"]

_C_SOURCE = r"""
#define BS_CH 64
#define PAR_MIN 16384
#define MIN(x, y) ((x) < (y) ? (x) : (y))
#define DEF_FWD_K(TY, SUF, KN, KEXPR)                                                                \
static void bs_fwd_##SUF##_##KN(const TY* A, const TY* b, const TY* h0, TY* out, int64_t B,          \
                                int64_t T, int64_t D, int64_t Kdyn, int64_t rev) {                   \
    const int64_t K = KEXPR, KK = K * K, nch = (D + BS_CH - 1) / BS_CH;                              \
    (void)Kdyn;                                                                                      \
    _Pragma("omp parallel for schedule(static) if (B * T * D > PAR_MIN)")                                                     \
    for (int64_t w = 0; w < B * nch; ++w) {                                                          \
        int64_t bi = w / nch, d0 = (w % nch) * BS_CH, n = MIN(BS_CH, D - d0);                        \
        for (int64_t s = 0; s < T; ++s) {                                                            \
            int64_t t = rev ? T - 1 - s : s, tp = rev ? t + 1 : t - 1;                               \
            const TY* At = A + ((bi * T + t) * D + d0) * KK;                                         \
            const TY* bt = b + ((bi * T + t) * D + d0) * K;                                          \
            TY* ot = out + ((bi * T + t) * D + d0) * K;                                              \
            const TY* hp = s > 0 ? out + ((bi * T + tp) * D + d0) * K : (h0 ? h0 + (bi * D + d0) * K : NULL); \
            for (int64_t c = 0; c < n; ++c)                                                          \
                for (int64_t i = 0; i < K; ++i) {                                                    \
                    TY acc = bt[c * K + i];                                                          \
                    if (hp) for (int64_t j = 0; j < K; ++j) acc += At[c * KK + i * K + j] * hp[c * K + j]; \
                    ot[c * K + i] = acc;                                                             \
                }                                                                                    \
        }                                                                                            \
    }                                                                                                \
}
#define DEF_BWD_K(TY, SUF, KN, KEXPR)                                                                \
static void bs_bwd_##SUF##_##KN(const TY* go, const TY* A, const TY* h, const TY* h0, TY* dA,       \
                                TY* db, TY* dh0, int64_t B, int64_t T, int64_t D, int64_t Kdyn,      \
                                int64_t rev) {                                                       \
    const int64_t K = KEXPR, KK = K * K, nch = (D + BS_CH - 1) / BS_CH;                              \
    (void)Kdyn;                                                                                      \
    _Pragma("omp parallel for schedule(static) if (B * T * D > PAR_MIN)")                                                     \
    for (int64_t w = 0; w < B * nch; ++w) {                                                          \
        int64_t bi = w / nch, d0 = (w % nch) * BS_CH, n = MIN(BS_CH, D - d0);                        \
        for (int64_t s = T - 1; s >= 0; --s) {                                                       \
            int64_t t = rev ? T - 1 - s : s, tp = rev ? t + 1 : t - 1, tn = rev ? t - 1 : t + 1;     \
            int64_t o = (bi * T + t) * D + d0;                                                       \
            const TY* An = s < T - 1 ? A + ((bi * T + tn) * D + d0) * KK : NULL;                     \
            const TY* gn = s < T - 1 ? db + ((bi * T + tn) * D + d0) * K : NULL;                     \
            const TY* hp = s > 0 ? h + ((bi * T + tp) * D + d0) * K : (h0 ? h0 + (bi * D + d0) * K : NULL); \
            const TY* gt = go + o * K; TY* dbt = db + o * K; TY* dAt = dA + o * KK;                  \
            for (int64_t c = 0; c < n; ++c) {                                                        \
                for (int64_t i = 0; i < K; ++i) {                                                    \
                    TY acc = gt[c * K + i];                                                          \
                    if (An) for (int64_t j = 0; j < K; ++j) acc += An[c * KK + j * K + i] * gn[c * K + j]; \
                    dbt[c * K + i] = acc;                                                            \
                }                                                                                    \
                for (int64_t i = 0; i < K; ++i)                                                      \
                    for (int64_t j = 0; j < K; ++j)                                                  \
                        dAt[c * KK + i * K + j] = hp ? dbt[c * K + i] * hp[c * K + j] : (TY)0;       \
            }                                                                                        \
        }                                                                                            \
        int64_t t0 = rev ? T - 1 : 0;                                                                \
        const TY* A0 = A + ((bi * T + t0) * D + d0) * KK; const TY* g0 = db + ((bi * T + t0) * D + d0) * K; \
        for (int64_t c = 0; c < n; ++c)                                                              \
            for (int64_t i = 0; i < K; ++i) {                                                        \
                TY acc = 0;                                                                          \
                for (int64_t j = 0; j < K; ++j) acc += A0[c * KK + j * K + i] * g0[c * K + j];       \
                dh0[(bi * D + d0 + c) * K + i] = acc;                                                \
            }                                                                                        \
    }                                                                                                \
}
#define DEF_ALL(TY, SUF)                                                                             \
DEF_FWD_K(TY, SUF, k1, 1) DEF_FWD_K(TY, SUF, k2, 2) DEF_FWD_K(TY, SUF, k3, 3)                        \
DEF_FWD_K(TY, SUF, k4, 4) DEF_FWD_K(TY, SUF, kn, Kdyn)                                              \
DEF_BWD_K(TY, SUF, k1, 1) DEF_BWD_K(TY, SUF, k2, 2) DEF_BWD_K(TY, SUF, k3, 3)                        \
DEF_BWD_K(TY, SUF, k4, 4) DEF_BWD_K(TY, SUF, kn, Kdyn)                                              \
void bs_fwd_##SUF(const TY* A, const TY* b, const TY* h0, TY* out, int64_t B, int64_t T,            \
                  int64_t D, int64_t K, int64_t rev) {                                               \
    switch (K) {                                                                                     \
        case 1: bs_fwd_##SUF##_k1(A, b, h0, out, B, T, D, K, rev); break;                            \
        case 2: bs_fwd_##SUF##_k2(A, b, h0, out, B, T, D, K, rev); break;                            \
        case 3: bs_fwd_##SUF##_k3(A, b, h0, out, B, T, D, K, rev); break;                            \
        case 4: bs_fwd_##SUF##_k4(A, b, h0, out, B, T, D, K, rev); break;                            \
        default: bs_fwd_##SUF##_kn(A, b, h0, out, B, T, D, K, rev);                                  \
    }                                                                                                \
}                                                                                                    \
void bs_bwd_##SUF(const TY* go, const TY* A, const TY* h, const TY* h0, TY* dA, TY* db, TY* dh0,    \
                  int64_t B, int64_t T, int64_t D, int64_t K, int64_t rev) {                         \
    switch (K) {                                                                                     \
        case 1: bs_bwd_##SUF##_k1(go, A, h, h0, dA, db, dh0, B, T, D, K, rev); break;                \
        case 2: bs_bwd_##SUF##_k2(go, A, h, h0, dA, db, dh0, B, T, D, K, rev); break;                \
        case 3: bs_bwd_##SUF##_k3(go, A, h, h0, dA, db, dh0, B, T, D, K, rev); break;                \
        case 4: bs_bwd_##SUF##_k4(go, A, h, h0, dA, db, dh0, B, T, D, K, rev); break;                \
        default: bs_bwd_##SUF##_kn(go, A, h, h0, dA, db, dh0, B, T, D, K, rev);                      \
    }                                                                                                \
}
DEF_ALL(float, f32)
DEF_ALL(double, f64)
"""

_FWD_ARGS = [PTR, PTR, PTR, PTR, I64, I64, I64, I64, I64]
_BWD_ARGS = [PTR, PTR, PTR, PTR, PTR, PTR, PTR, I64, I64, I64, I64, I64]
KERNEL = CKernel("block_scan", _C_SOURCE, {
    "bs_fwd_f32": _FWD_ARGS, "bs_fwd_f64": _FWD_ARGS, "bs_bwd_f32": _BWD_ARGS, "bs_bwd_f64": _BWD_ARGS,
})


def _lib(*tensors):
    if any(t is not None and t.device.type != "cpu" for t in tensors):
        return None
    return KERNEL.load()


def _matmul(x, y):
    return x @ y


def _matvec(m, v):
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def _eye(A):
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def block_scan_fwd(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """A: (B, T, D, K, K); b: (B, T, D, K); h0: (B, D, K) or None. Returns h (B, T, D, K), state dtype."""
    A, b, h0 = to_state_dtype(A, b, h0)
    lib = _lib(A, b, h0)
    if lib is None:
        return chunked.scan(A, b, h0, reverse, _matmul, _matvec, _eye(A))
    out = torch.empty_like(b)
    B, T, D, K = b.shape
    getattr(lib, "bs_fwd_" + c_suffix(b))(ptr(A), ptr(b), ptr(h0), ptr(out), B, T, D, K, int(reverse))
    return out


def block_scan_bwd(go: torch.Tensor, A: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None,
                   reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """go, h: (B, T, D, K); A: (B, T, D, K, K); h0: (B, D, K) or None. Returns (dA, db, dh0 (B, D, K))."""
    go, A, h, h0 = to_state_dtype(go, A, h, h0)
    lib = _lib(go, A, h, h0)
    if lib is None:
        At = A.transpose(-1, -2)
        g = chunked.scan(chunked.shift_next(At, reverse), go, None, not reverse, _matmul, _matvec, _eye(A))
        dA = g.unsqueeze(-1) * chunked.shift_prev(h, h0, reverse).unsqueeze(-2)
        first = -1 if reverse else 0
        return dA, g, _matvec(At[:, first], g[:, first])
    B, T, D, K = h.shape
    dA, db = torch.empty_like(A), torch.empty_like(h)
    dh0 = torch.empty((B, D, K), dtype=h.dtype, device=h.device)
    getattr(lib, "bs_bwd_" + c_suffix(h))(ptr(go), ptr(A), ptr(h), ptr(h0), ptr(dA), ptr(db), ptr(dh0),
                                         B, T, D, K, int(reverse))
    return dA, db, dh0
