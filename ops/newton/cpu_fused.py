"""Fused CPU Newton for ParaGRU and ParaLSTM: every iteration is one pass over the sequence in C.

Same equations and Newton iteration as ``triton_paragru`` / ``triton_paralstm`` (ANCHORS.md):
    initial guess h_t = f(h0, u_t);  per iteration, for t = 0 .. T-1 (vectorised over channels):
        A_t = df/dh(h_{t-1}),  r_t = f(h_{t-1}, u_t) - h_t,  delta_t = A_t delta_{t-1} + r_t,
        h_t <- h_t + delta_t   (h_{t-1} is the previous iterate's value, kept in a register)
    stop when |r_t| <= atol + rtol |h_t| for every t and channel of a batch row.
On a CPU the linear recurrence of a Newton step costs the same sequential pass as the scan kernel
(``linear_scan``'s fused C loop), so fusing cell, Jacobian, residual and scan removes ~30 memory
passes per iteration. The pass that finds the residual small also applies its (tiny) update.
Parallel over batch rows with OpenMP; float32 only (float64 runs the generic torch path).
Compiled on first use by ``ops/_cpu_jit``; None when no compiler (the generic path runs).
Layouts: u (B, T, 3H); ParaGRU: w (3, H), h0 (B, H), out (B, T, H);
ParaLSTM: w (5, H) = a_f, a_c, a_o, p_f, p_o, h0 (B, H, 2), out (B, T, H, 2).
"""
from __future__ import annotations

import torch

from .._cpu_jit import F32, I64, PTR, CKernel, ptr

__all__ = ["paragru_newton_cpu", "paralstm_newton_cpu"]

_SRC = r"""
/* exp by 2^x = 2^floor * poly(frac), branch-free so the channel loops vectorise (libm's expf does
   not); relative error ~2e-7. NaN input: clamped to a finite value, but a NaN state is still
   caught through its own residual r = f - h. */
static inline float fexp(float x) {
    x = fminf(fmaxf(x, -87.0f), 88.0f);
    float t = x * 1.44269504f, fl = floorf(t), f = t - fl;
    float p = 1.535336188e-4f;
    p = p * f + 1.339887440e-3f; p = p * f + 9.618437357e-3f; p = p * f + 5.550332471e-2f;
    p = p * f + 2.402264791e-1f; p = p * f + 6.931472028e-1f; p = p * f + 1.0f;
    int32_t bits;
    memcpy(&bits, &p, 4);
    bits += ((int32_t)fl) << 23;
    memcpy(&p, &bits, 4);
    return p;
}
static inline float sgm(float v) { return 1.0f / (1.0f + fexp(-v)); }
static inline float tnh(float v) { return 2.0f * sgm(2.0f * v) - 1.0f; }

static inline void gru(float hp, float uz, float ur, float uh, float az, float ar, float ah, float* f, float* a) {
    float z = sgm(az * hp + uz), r = sgm(ar * hp + ur), c = tnh(ah * (hp * r) + uh);
    *f = hp + z * (c - hp);
    *a = z * (1.0f - z) * az * (c - hp) + z * (1.0f - c * c) * ah * (r + hp * r * (1.0f - r) * ar) + (1.0f - z);
}

static inline void lstm(float cp, float hp, float uf, float uc, float uo, const float* w, int64_t H, int64_t j,
                        float* c, float* h, float* a00, float* a01, float* a10, float* a11) {
    float af = w[j], ac = w[H + j], ao = w[2 * H + j], pf = w[3 * H + j], po = w[4 * H + j];
    float f = sgm(af * hp + uf + pf * cp), ct = tnh(ac * hp + uc);
    float cn = ct + f * (cp - ct);
    float o = sgm(ao * hp + uo + po * cn), tc = tnh(cn);
    float df = f * (1.0f - f), dcc = f + df * pf * (cp - ct);
    float dch = df * af * (cp - ct) + (1.0f - f) * (1.0f - ct * ct) * ac;
    float dd = o * (1.0f - o), dhc = dd * po * tc + o * (1.0f - tc * tc);
    *c = cn; *h = o * tc; *a00 = dcc; *a01 = dch; *a10 = dhc * dcc; *a11 = dd * ao * tc + dhc * dch;
}

void gru_newton_f32(const float* u, const float* w, const float* h0, float* out, float* scratch,
                    int32_t* iters, float* resid, int32_t* ok, int64_t B, int64_t T, int64_t H,
                    int64_t max_iters, float atol, float rtol) {
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; b++) {
        const float* ub = u + b * T * 3 * H;
        float* hb = out + b * T * H;
        const float* s0 = h0 + b * H;
        float* delta = scratch + b * 2 * H;
        float* hprev = delta + H;
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < H; j++) {
                float f, a;
                gru(s0[j], ub[t * 3 * H + j], ub[t * 3 * H + H + j], ub[t * 3 * H + 2 * H + j], w[j], w[H + j], w[2 * H + j], &f, &a);
                hb[t * H + j] = f;
            }
        int64_t k = 0;
        int good = 0;
        float res = 0.0f;
        for (;;) {
            int bad = 0, nan = 0;
            res = 0.0f;
            for (int64_t j = 0; j < H; j++) { delta[j] = 0.0f; hprev[j] = s0[j]; }
            for (int64_t t = 0; t < T; t++) {
                const float* ut = ub + t * 3 * H;
                float* ht = hb + t * H;
                #pragma omp simd reduction(|:bad, nan) reduction(max:res)
                for (int64_t j = 0; j < H; j++) {
                    float f, a, hc = ht[j];
                    gru(hprev[j], ut[j], ut[H + j], ut[2 * H + j], w[j], w[H + j], w[2 * H + j], &f, &a);
                    float r = f - hc, ar = fabsf(r);
                    bad |= !(ar <= atol + rtol * fabsf(hc));
                    nan |= (r != r);
                    res = fmaxf(res, ar);
                    float d = a * delta[j] + r;
                    delta[j] = d;
                    hprev[j] = hc;
                    ht[j] = hc + d;
                }
            }
            if (!bad) { good = 1; break; }
            if (nan || k >= max_iters) break;
            k++;
        }
        iters[b] = (int32_t)k; resid[b] = res; ok[b] = good;
    }
}

void lstm_newton_f32(const float* u, const float* w, const float* h0, float* out, float* scratch,
                     int32_t* iters, float* resid, int32_t* ok, int64_t B, int64_t T, int64_t H,
                     int64_t max_iters, float atol, float rtol) {
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; b++) {
        const float* ub = u + b * T * 3 * H;
        float* sb = out + b * T * H * 2;
        const float* s0 = h0 + b * H * 2;
        float* dl = scratch + b * 4 * H;   /* delta c, delta h, previous c, previous h: (H, 4) */
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < H; j++) {
                float c, h, a00, a01, a10, a11;
                const float* ut = ub + t * 3 * H;
                lstm(s0[2 * j], s0[2 * j + 1], ut[j], ut[H + j], ut[2 * H + j], w, H, j, &c, &h, &a00, &a01, &a10, &a11);
                sb[(t * H + j) * 2] = c; sb[(t * H + j) * 2 + 1] = h;
            }
        int64_t k = 0;
        int good = 0;
        float res = 0.0f;
        for (;;) {
            int bad = 0, nan = 0;
            res = 0.0f;
            for (int64_t j = 0; j < H; j++) { dl[4 * j] = 0.0f; dl[4 * j + 1] = 0.0f; dl[4 * j + 2] = s0[2 * j]; dl[4 * j + 3] = s0[2 * j + 1]; }
            for (int64_t t = 0; t < T; t++) {
                const float* ut = ub + t * 3 * H;
                float* st = sb + t * H * 2;
                #pragma omp simd reduction(|:bad, nan) reduction(max:res)
                for (int64_t j = 0; j < H; j++) {
                    float c, h, a00, a01, a10, a11, cc = st[2 * j], hc = st[2 * j + 1];
                    lstm(dl[4 * j + 2], dl[4 * j + 3], ut[j], ut[H + j], ut[2 * H + j], w, H, j, &c, &h, &a00, &a01, &a10, &a11);
                    float rc = c - cc, rh = h - hc, arc = fabsf(rc), arh = fabsf(rh);
                    bad |= !(arc <= atol + rtol * fabsf(cc)) | !(arh <= atol + rtol * fabsf(hc));
                    nan |= (rc != rc) | (rh != rh);
                    res = fmaxf(res, fmaxf(arc, arh));
                    float d0 = a00 * dl[4 * j] + a01 * dl[4 * j + 1] + rc;
                    float d1 = a10 * dl[4 * j] + a11 * dl[4 * j + 1] + rh;
                    dl[4 * j] = d0; dl[4 * j + 1] = d1; dl[4 * j + 2] = cc; dl[4 * j + 3] = hc;
                    st[2 * j] = cc + d0; st[2 * j + 1] = hc + d1;
                }
            }
            if (!bad) { good = 1; break; }
            if (nan || k >= max_iters) break;
            k++;
        }
        iters[b] = (int32_t)k; resid[b] = res; ok[b] = good;
    }
}
"""

_ARGS = [PTR, PTR, PTR, PTR, PTR, PTR, PTR, PTR, I64, I64, I64, I64, F32, F32]
KERNEL = CKernel("newton_fused", _SRC, {"gru_newton_f32": _ARGS, "lstm_newton_f32": _ARGS})


def _run(fn_name, tail, scratch_per_h, u, weights, h0, max_iters, atol, rtol):
    lib = KERNEL.load()
    if lib is None or u.is_cuda:
        return None
    B, T, H3 = u.shape
    H = H3 // 3
    u = u.detach().to(torch.float32).contiguous()
    w = weights.detach().to(torch.float32).contiguous()
    s0 = h0.detach().to(torch.float32).contiguous()
    out = torch.empty(B, T, H, *tail, dtype=torch.float32)
    scratch = torch.empty(B, scratch_per_h * H, dtype=torch.float32)
    iters = torch.zeros(B, dtype=torch.int32)
    resid = torch.zeros(B, dtype=torch.float32)
    ok = torch.zeros(B, dtype=torch.int32)
    getattr(lib, fn_name)(ptr(u), ptr(w), ptr(s0), ptr(out), ptr(scratch), ptr(iters), ptr(resid), ptr(ok),
                          B, T, H, int(max_iters), float(atol), float(rtol))
    return out, int(iters.max()), float(resid.max()), bool(ok.min() == 1)


def paragru_newton_cpu(u, weights, h0, max_iters, atol, rtol):
    """u (B, T, 3H), weights (3, H), h0 (B, H) -> (h (B, T, H), iters, resid, ok) or None (no compiler)."""
    return _run("gru_newton_f32", (), 2, u, weights, h0, max_iters, atol, rtol)


def paralstm_newton_cpu(u, weights, h0, max_iters, atol, rtol):
    """u (B, T, 3H), weights (5, H), h0 (B, H, 2) -> (s (B, T, H, 2), iters, resid, ok) or None."""
    return _run("lstm_newton_f32", (2,), 4, u, weights, h0, max_iters, atol, rtol)
