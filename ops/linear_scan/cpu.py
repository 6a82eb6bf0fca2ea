"""Fast CPU path of ``linear_scan``: a fused C loop (ops/_cpu_jit), pure-torch fallback.

    forward:   h_t = a_t * h_{t-1} + b_t                       (t in scan order, h_{-1} = h0)
    backward:  g_t = dL/dh_t + a_{t+1} * g_{t+1}                 (reverse scan order, g_T = 0)
               dL/db_t = g_t;  dL/da_t = g_t * h_{t-1};  dL/dh0 = a_0 * g_0

"Scan order" is t = 0 .. T-1, or T-1 .. 0 when ``reverse``; "t+1"/"t-1" are the next/previous
step in that order. Tensors here are flattened and contiguous: a, b, h, grads (B, T, D), h0 (B, D),
all in the state dtype (float32 or float64). The C loop walks time sequentially and is
OpenMP-parallel over (batch, block of LS_CH channels) rows; the inner loop over a channel block is
contiguous, so it vectorises and streams memory. Without a compiler the pure-torch chunked scan in
``chunked.py`` runs instead (also used for CUDA tensors, where C cannot run).
"""
from __future__ import annotations

import torch

from .._cpu_jit import CKernel, I64, PTR, ptr
from . import chunked
from .reference import state_dtype

__all__ = ["linear_scan_fwd", "linear_scan_bwd"]

_C_SOURCE = r"""
#define LS_CH 256
#define PAR_MIN 65536  /* below this many elements a fork/join costs more than it saves */
#define MIN(x, y) ((x) < (y) ? (x) : (y))
/* a, b, out: (B, T, D); h0: (B, D) or NULL. */
#define DEF_FWD(TY, SUF)                                                                          \
void ls_fwd_##SUF(const TY* a, const TY* b, const TY* h0, TY* out,                                \
                  int64_t B, int64_t T, int64_t D, int64_t rev) {                                 \
    int64_t nch = (D + LS_CH - 1) / LS_CH;                                                        \
    _Pragma("omp parallel for schedule(static) if (B * T * D > PAR_MIN)")                                                  \
    for (int64_t w = 0; w < B * nch; ++w) {                                                       \
        int64_t bi = w / nch, d0 = (w % nch) * LS_CH, n = MIN(LS_CH, D - d0);                     \
        TY h[LS_CH];                                                                              \
        for (int64_t i = 0; i < n; ++i) h[i] = h0 ? h0[bi * D + d0 + i] : (TY)0;                  \
        for (int64_t s = 0; s < T; ++s) {                                                         \
            int64_t t = rev ? T - 1 - s : s;                                                      \
            const TY* at = a + (bi * T + t) * D + d0;                                             \
            const TY* bt = b + (bi * T + t) * D + d0;                                             \
            TY* ot = out + (bi * T + t) * D + d0;                                                 \
            for (int64_t i = 0; i < n; ++i) { h[i] = at[i] * h[i] + bt[i]; ot[i] = h[i]; }        \
        }                                                                                         \
    }                                                                                             \
}
/* go (dL/dh), a, h: (B, T, D); h0: (B, D) or NULL; writes da, db (B, T, D) and dh0 (B, D). */
#define DEF_BWD(TY, SUF)                                                                          \
void ls_bwd_##SUF(const TY* go, const TY* a, const TY* h, const TY* h0,                           \
                  TY* da, TY* db, TY* dh0, int64_t B, int64_t T, int64_t D, int64_t rev) {        \
    int64_t nch = (D + LS_CH - 1) / LS_CH;                                                        \
    _Pragma("omp parallel for schedule(static) if (B * T * D > PAR_MIN)")                                                  \
    for (int64_t w = 0; w < B * nch; ++w) {                                                       \
        int64_t bi = w / nch, d0 = (w % nch) * LS_CH, n = MIN(LS_CH, D - d0);                     \
        TY g[LS_CH], an[LS_CH];                                                                   \
        for (int64_t i = 0; i < n; ++i) { g[i] = 0; an[i] = 0; }                                  \
        for (int64_t s = T - 1; s >= 0; --s) {                                                    \
            int64_t t = rev ? T - 1 - s : s, tp = rev ? t + 1 : t - 1;                            \
            int64_t o = (bi * T + t) * D + d0;                                                    \
            const TY* hp = s > 0 ? h + (bi * T + tp) * D + d0 : (h0 ? h0 + bi * D + d0 : NULL);   \
            for (int64_t i = 0; i < n; ++i) {                                                     \
                TY gi = go[o + i] + an[i] * g[i];                                                 \
                g[i] = gi; an[i] = a[o + i];                                                      \
                db[o + i] = gi; da[o + i] = hp ? gi * hp[i] : (TY)0;                              \
            }                                                                                     \
        }                                                                                         \
        for (int64_t i = 0; i < n; ++i) dh0[bi * D + d0 + i] = an[i] * g[i];                      \
    }                                                                                             \
}
DEF_FWD(float, f32)
DEF_FWD(double, f64)
DEF_BWD(float, f32)
DEF_BWD(double, f64)
"""

_FWD_ARGS = [PTR, PTR, PTR, PTR, I64, I64, I64, I64]
_BWD_ARGS = [PTR, PTR, PTR, PTR, PTR, PTR, PTR, I64, I64, I64, I64]
KERNEL = CKernel("linear_scan", _C_SOURCE, {
    "ls_fwd_f32": _FWD_ARGS, "ls_fwd_f64": _FWD_ARGS, "ls_bwd_f32": _BWD_ARGS, "ls_bwd_f64": _BWD_ARGS,
})


def _lib(*tensors):
    """The compiled library when every tensor is on the CPU and a compiler works, else None."""
    if any(t is not None and t.device.type != "cpu" for t in tensors):
        return None
    return KERNEL.load()


def to_state_dtype(*tensors):
    """Cast to the state dtype (float64 if any is float64, else float32), contiguous."""
    sd = state_dtype(*tensors)
    return [None if t is None else t.to(sd).contiguous() for t in tensors]


def c_suffix(t: torch.Tensor) -> str:
    return "f64" if t.dtype == torch.float64 else "f32"


def linear_scan_fwd(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """a, b: (B, T, D) contiguous; h0: (B, D) or None. Returns h (B, T, D) in the state dtype."""
    a, b, h0 = to_state_dtype(a, b, h0)
    lib = _lib(a, b, h0)
    if lib is None:
        return chunked.diag_scan(a, b, h0, reverse)
    out = torch.empty_like(b)
    B, T, D = b.shape
    getattr(lib, "ls_fwd_" + c_suffix(b))(ptr(a), ptr(b), ptr(h0), ptr(out), B, T, D, int(reverse))
    return out


def linear_scan_bwd(go: torch.Tensor, a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None,
                    reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """go, a, h: (B, T, D); h0: (B, D) or None. Returns (da, db, dh0) with dh0 (B, D)."""
    go, a, h, h0 = to_state_dtype(go, a, h, h0)
    lib = _lib(go, a, h, h0)
    if lib is None:
        return chunked.diag_scan_bwd(go, a, h, h0, reverse)
    B, T, D = a.shape
    da, db = torch.empty_like(a), torch.empty_like(a)
    dh0 = torch.empty((B, D), dtype=a.dtype, device=a.device)
    getattr(lib, "ls_bwd_" + c_suffix(a))(ptr(go), ptr(a), ptr(h), ptr(h0), ptr(da), ptr(db), ptr(dh0),
                                         B, T, D, int(reverse))
    return da, db, dh0
