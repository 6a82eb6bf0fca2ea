"""Fused C loops of recurrent retention (ops/_cpu_jit): forward and backward, one (b, h) per
OpenMP iteration, the (K, V) state in a private buffer. Same equations as cpu_recurrent.py:

    S_t = gamma S_{t-1} + k_t^T v_t,  o_t = scale q_t S_t
    dq_t = scale do_t S_t^T;  G_t = gamma G_{t+1} + scale q_t^T do_t (G_T = d final_state);
    dk_t = v_t G_t^T,  dv_t = k_t G_t,  d initial_state = gamma G_0

Inputs are contiguous (B, T, H, D) arrays in the accumulation dtype (float32 or float64).
"""
from __future__ import annotations

from .._cpu_jit import CKernel, F32, F64, I64, PTR

__all__ = ["KERNEL"]

_SOURCE = r"""
#define RET_DEFINE(TY, SUF)                                                                        \
void ret_fwd_##SUF(const TY* q, const TY* k, const TY* v, const TY* h0, TY* o, TY* ht,            \
                   const TY* gam, int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, TY scale) { \
  _Pragma("omp parallel for schedule(static)")                                                    \
  for (int64_t bh = 0; bh < B * H; ++bh) {                                                        \
    int64_t b = bh / H, h = bh % H;                                                               \
    TY g = gam[h];                                                                                \
    TY* S = (TY*)malloc(sizeof(TY) * K * V);                                                      \
    if (h0) memcpy(S, h0 + bh * K * V, sizeof(TY) * K * V); else memset(S, 0, sizeof(TY) * K * V); \
    for (int64_t t = 0; t < T; ++t) {                                                             \
      int64_t row = (b * T + t) * H + h;                                                          \
      const TY *qt = q + row * K, *kt = k + row * K, *vt = v + row * V;                           \
      TY* restrict ot = o + row * V;                                                                       \
      for (int64_t j = 0; j < V; ++j) ot[j] = 0;                                                  \
      for (int64_t i = 0; i < K; ++i) {                                                           \
        TY ki = kt[i], qi = scale * qt[i];                                                        \
        TY* restrict Si = S + i * V;                                                                       \
        for (int64_t j = 0; j < V; ++j) { Si[j] = g * Si[j] + ki * vt[j]; ot[j] += qi * Si[j]; }   \
      }                                                                                           \
    }                                                                                             \
    if (ht) memcpy(ht + bh * K * V, S, sizeof(TY) * K * V);                                       \
    free(S);                                                                                      \
  }                                                                                               \
}                                                                                                 \
void ret_bwd_##SUF(const TY* q, const TY* k, const TY* v, const TY* h0, const TY* dout,           \
                   const TY* dht, TY* dq, TY* dk, TY* dv, TY* dh0, const TY* gam,                 \
                   int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, TY scale) {             \
  _Pragma("omp parallel for schedule(static)")                                                    \
  for (int64_t bh = 0; bh < B * H; ++bh) {                                                        \
    int64_t b = bh / H, h = bh % H;                                                               \
    TY g = gam[h];                                                                                \
    TY* S = (TY*)malloc(sizeof(TY) * K * V);                                                      \
    if (h0) memcpy(S, h0 + bh * K * V, sizeof(TY) * K * V); else memset(S, 0, sizeof(TY) * K * V); \
    for (int64_t t = 0; t < T; ++t) {              /* S_t again: dq_t = scale S_t do_t */         \
      int64_t row = (b * T + t) * H + h;                                                          \
      const TY *kt = k + row * K, *vt = v + row * V, *dot = dout + row * V;                       \
      for (int64_t i = 0; i < K; ++i) {                                                           \
        TY ki = kt[i], acc = 0;                                                                   \
        TY* restrict Si = S + i * V;                                                                       \
        _Pragma("omp simd reduction(+:acc)")                                                      \
        for (int64_t j = 0; j < V; ++j) { Si[j] = g * Si[j] + ki * vt[j]; acc += Si[j] * dot[j]; } \
        dq[row * K + i] = scale * acc;                                                            \
      }                                                                                           \
    }                                                                                             \
    TY* G = S;                                     /* reverse: G_t, dk_t, dv_t */                 \
    if (dht) memcpy(G, dht + bh * K * V, sizeof(TY) * K * V); else memset(G, 0, sizeof(TY) * K * V); \
    for (int64_t t = T - 1; t >= 0; --t) {                                                        \
      int64_t row = (b * T + t) * H + h;                                                          \
      const TY *qt = q + row * K, *kt = k + row * K, *vt = v + row * V, *dot = dout + row * V;    \
      TY* restrict dvt = dv + row * V;                                                                     \
      for (int64_t j = 0; j < V; ++j) dvt[j] = 0;                                                 \
      for (int64_t i = 0; i < K; ++i) {                                                           \
        TY qi = scale * qt[i], ki = kt[i], acc = 0;                                               \
        TY* restrict Gi = G + i * V;                                                                       \
        _Pragma("omp simd reduction(+:acc)")                                                      \
        for (int64_t j = 0; j < V; ++j) {                                                         \
          Gi[j] += qi * dot[j]; acc += Gi[j] * vt[j]; dvt[j] += ki * Gi[j]; Gi[j] *= g;            \
        }                                                                                         \
        dk[row * K + i] = acc;                                                                    \
      }                                                                                           \
    }                                                                                             \
    if (dh0) memcpy(dh0 + bh * K * V, G, sizeof(TY) * K * V);                                     \
    free(S);                                                                                      \
  }                                                                                               \
}
RET_DEFINE(float, f32)
RET_DEFINE(double, f64)
"""

_FWD = [PTR] * 7 + [I64] * 5
_BWD = [PTR] * 11 + [I64] * 5
KERNEL = CKernel("retention_recurrent", _SOURCE, {
    "ret_fwd_f32": _FWD + [F32], "ret_fwd_f64": _FWD + [F64],
    "ret_bwd_f32": _BWD + [F32], "ret_bwd_f64": _BWD + [F64],
})
