"""Fused C loops for the selective scan (forward and backward), compiled on first use by ``_cpu_jit``.

One OpenMP task per (batch, dim) row; the N-vector state h lives on the stack and the row makes
one pass over L, so nothing of size (batch, dim, L, N) ever exists. B and C arrive transposed to
(batch, G, L, N) so that each time step reads one contiguous N-vector.

Forward (per row, h_{-1} = 0, reset to 0 at sequence starts):
    dl_t = [softplus](delta_t + bias);  a_t = exp(dl_t A);  h_t = a_t h_{t-1} + dl_t u_t B_t
    y_t = (C_t . h_t + D u_t) [* silu(z_t)];  h at every multiple of K is kept as a checkpoint.

Backward (reverse scan, states recomputed chunk by chunk of K steps from the checkpoints):
    dy_t = dout_t [* silu(z_t)];  dz_t = dout_t (C_t . h_t + D u_t) silu'(z_t)
    g_t  = dy_t C_t + a_{t+1} g_{t+1}  (+ dlast at a sequence end; no flow across a reset)
    dC_t += dy_t h_t;  dB_t += g_t dl_t u_t;  du_t = D dy_t + dl_t (g_t . B_t)
    ddl_t = g_t . (a_t h_{t-1} A + B_t u_t);  dA += g_t a_t h_{t-1} dl_t;  dD += dy_t u_t
    ddelta_t = ddl_t * sigmoid(delta_t + bias) under softplus, else ddl_t
dB, dC are summed over the channels of a group in per-thread buffers, added together at the end.

float32 uses a branch-free exp (Cody-Waite reduction + degree-7 polynomial, ~1 ulp, inputs
clamped to [-87, 88]) that the compiler vectorises over N; float64 uses libm's exp.
"""
from __future__ import annotations

from .._cpu_jit import CKernel, I64, PTR

__all__ = ["LIB", "CHUNK"]

CHUNK = 64  # checkpoint spacing K (time steps)

_COMMON = r"""
#ifdef _OPENMP
#include <omp.h>
#endif

static inline float ss_vexp_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float kf = (x * 1.4426950408889634f + 12582912.0f) - 12582912.0f;
    float r = x - kf * 0.693145751953125f;
    r = r - kf * 1.4286068203094172e-06f;
    float p = 1.9841269841269841e-04f;
    p = p * r + 1.3888888888888889e-03f;
    p = p * r + 8.3333333333333333e-03f;
    p = p * r + 4.1666666666666667e-02f;
    p = p * r + 1.6666666666666667e-01f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)kf + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof(s));
    return p * s;
}
"""

_TEMPLATE = r"""
static inline SCALAR ss_softplus_SFX(SCALAR x) { return x > (SCALAR)20 ? x : LOG1P(LEXP(x)); }
static inline SCALAR ss_sigmoid_SFX(SCALAR x) { return (SCALAR)1 / ((SCALAR)1 + LEXP(-x)); }

void ss_fwd_SFX(const SCALAR* u, const SCALAR* delta, const SCALAR* A, const SCALAR* Bt, const SCALAR* Ct,
                const SCALAR* Dv, const SCALAR* z, const SCALAR* dbias, const int32_t* reset, const int32_t* end_id,
                SCALAR* y, SCALAR* last, SCALAR* ckpt,
                int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t GB, int64_t GC, int64_t nseq,
                int64_t K, int64_t softplus, int64_t nthreads)
{
    const int64_t rows = batch * dim, nck = (L + K - 1) / K;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = r / dim, d = r % dim;
        const SCALAR* ur = u + r * L;
        const SCALAR* dr = delta + r * L;
        const SCALAR* zr = z ? z + r * L : 0;
        const SCALAR* Ar = A + d * N;
        const SCALAR* Bb = Bt + (b * GB + d / (dim / GB)) * L * N;
        const SCALAR* Cb = Ct + (b * GC + d / (dim / GC)) * L * N;
        SCALAR* yr = y + r * L;
        const SCALAR bias = dbias ? dbias[d] : (SCALAR)0, Dd = Dv ? Dv[d] : (SCALAR)0;
        SCALAR h[N];
        for (int64_t n = 0; n < N; n++) h[n] = 0;
        for (int64_t t = 0; t < L; t++) {
            if (ckpt && t % K == 0) memcpy(ckpt + (r * nck + t / K) * N, h, N * sizeof(SCALAR));
            if (reset[t]) for (int64_t n = 0; n < N; n++) h[n] = 0;
            SCALAR dl = dr[t] + bias;
            if (softplus) dl = ss_softplus_SFX(dl);
            const SCALAR x = ur[t], dlx = dl * x;
            const SCALAR* Bp = Bb + t * N;
            const SCALAR* Cp = Cb + t * N;
            SCALAR acc = 0;
            #pragma omp simd reduction(+:acc)
            for (int64_t n = 0; n < N; n++) {
                const SCALAR hn = VEXP(dl * Ar[n]) * h[n] + dlx * Bp[n];
                h[n] = hn;
                acc += Cp[n] * hn;
            }
            SCALAR out = acc + Dd * x;
            if (zr) out *= zr[t] * ss_sigmoid_SFX(zr[t]);
            yr[t] = out;
            if (last && end_id[t] >= 0) memcpy(last + ((b * nseq + end_id[t]) * dim + d) * N, h, N * sizeof(SCALAR));
        }
    }
}

void ss_bwd_SFX(const SCALAR* u, const SCALAR* delta, const SCALAR* A, const SCALAR* Bt, const SCALAR* Ct,
                const SCALAR* Dv, const SCALAR* z, const SCALAR* dbias, const int32_t* reset, const int32_t* end_id,
                const SCALAR* ckpt, const SCALAR* dout, const SCALAR* dlast,
                SCALAR* du, SCALAR* ddelta, SCALAR* dA, SCALAR* dBt, SCALAR* dCt, SCALAR* dD, SCALAR* dz,
                int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t GB, int64_t GC, int64_t nseq,
                int64_t K, int64_t softplus, int64_t nthreads)
{
    const int64_t rows = batch * dim, nck = (L + K - 1) / K;
    const int64_t nB = batch * GB * L * N, nC = batch * GC * L * N;
    #pragma omp parallel num_threads(nthreads)
    {
        SCALAR* hbuf = (SCALAR*)malloc(sizeof(SCALAR) * K * N);
        SCALAR* abuf = (SCALAR*)malloc(sizeof(SCALAR) * K * N);
        SCALAR* dlbuf = (SCALAR*)malloc(sizeof(SCALAR) * K);
        SCALAR* myB = (SCALAR*)calloc(nB > 0 ? nB : 1, sizeof(SCALAR));
        SCALAR* myC = (SCALAR*)calloc(nC > 0 ? nC : 1, sizeof(SCALAR));
        SCALAR h[N], g[N], dAacc[N], zeros[N];
        for (int64_t n = 0; n < N; n++) zeros[n] = 0;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const int64_t b = r / dim, d = r % dim;
            const int64_t gb = b * GB + d / (dim / GB), gc = b * GC + d / (dim / GC);
            const SCALAR* ur = u + r * L;
            const SCALAR* dr = delta + r * L;
            const SCALAR* zr = z ? z + r * L : 0;
            const SCALAR* Ar = A + d * N;
            const SCALAR* Bb = Bt + gb * L * N;
            const SCALAR* Cb = Ct + gc * L * N;
            const SCALAR* gor = dout + r * L;
            SCALAR* myBb = myB + gb * L * N;
            SCALAR* myCb = myC + gc * L * N;
            const SCALAR bias = dbias ? dbias[d] : (SCALAR)0, Dd = Dv ? Dv[d] : (SCALAR)0;
            SCALAR dDacc = 0;
            for (int64_t n = 0; n < N; n++) { g[n] = 0; dAacc[n] = 0; }
            for (int64_t c = nck - 1; c >= 0; c--) {
                const int64_t t0 = c * K, t1 = (t0 + K < L) ? t0 + K : L;
                const SCALAR* h0 = ckpt + (r * nck + c) * N;
                for (int64_t n = 0; n < N; n++) h[n] = h0[n];
                for (int64_t t = t0; t < t1; t++) {          /* recompute the chunk's states */
                    const int64_t k = t - t0;
                    if (reset[t]) for (int64_t n = 0; n < N; n++) h[n] = 0;
                    SCALAR dl = dr[t] + bias;
                    if (softplus) dl = ss_softplus_SFX(dl);
                    dlbuf[k] = dl;
                    const SCALAR dlx = dl * ur[t];
                    const SCALAR* Bp = Bb + t * N;
                    SCALAR* ak = abuf + k * N;
                    SCALAR* hk = hbuf + k * N;
                    #pragma omp simd
                    for (int64_t n = 0; n < N; n++) {
                        const SCALAR an = VEXP(dl * Ar[n]);
                        const SCALAR hn = an * h[n] + dlx * Bp[n];
                        ak[n] = an; hk[n] = hn; h[n] = hn;
                    }
                }
                for (int64_t t = t1 - 1; t >= t0; t--) {     /* reverse scan through the chunk */
                    const int64_t k = t - t0;
                    const SCALAR x = ur[t], dl = dlbuf[k];
                    const SCALAR* Bp = Bb + t * N;
                    const SCALAR* Cp = Cb + t * N;
                    const SCALAR* ak = abuf + k * N;
                    const SCALAR* hk = hbuf + k * N;
                    const SCALAR* hp = reset[t] ? zeros : (k > 0 ? hbuf + (k - 1) * N : h0);
                    if (dlast && end_id[t] >= 0) {
                        const SCALAR* dl_ = dlast + ((b * nseq + end_id[t]) * dim + d) * N;
                        for (int64_t n = 0; n < N; n++) g[n] += dl_[n];
                    }
                    SCALAR dy = gor[t];
                    if (zr) {
                        const SCALAR zz = zr[t], sz = ss_sigmoid_SFX(zz);
                        SCALAR ypre = Dd * x;
                        for (int64_t n = 0; n < N; n++) ypre += Cp[n] * hk[n];
                        dz[r * L + t] = dy * ypre * sz * ((SCALAR)1 + zz * ((SCALAR)1 - sz));
                        dy = dy * zz * sz;
                    }
                    dDacc += dy * x;
                    SCALAR* mB = myBb + t * N;
                    SCALAR* mC = myCb + t * N;
                    const SCALAR dlx = dl * x;
                    SCALAR ddl = 0, gB = 0;
                    #pragma omp simd reduction(+:ddl, gB)
                    for (int64_t n = 0; n < N; n++) {
                        const SCALAR gn = g[n] + dy * Cp[n];
                        const SCALAR ah = ak[n] * hp[n];
                        mC[n] += dy * hk[n];
                        mB[n] += gn * dlx;
                        ddl += gn * (ah * Ar[n] + Bp[n] * x);
                        dAacc[n] += gn * ah * dl;
                        gB += gn * Bp[n];
                        g[n] = gn * ak[n];
                    }
                    if (reset[t]) for (int64_t n = 0; n < N; n++) g[n] = 0;
                    du[r * L + t] = dy * Dd + dl * gB;
                    ddelta[r * L + t] = softplus ? ddl * ss_sigmoid_SFX(dr[t] + bias) : ddl;
                }
            }
            for (int64_t n = 0; n < N; n++) dA[r * N + n] = dAacc[n];
            dD[r] = dDacc;
        }
        #pragma omp critical
        {
            for (int64_t i = 0; i < nB; i++) dBt[i] += myB[i];
            for (int64_t i = 0; i < nC; i++) dCt[i] += myC[i];
        }
        free(hbuf); free(abuf); free(dlbuf); free(myB); free(myC);
    }
}
"""


def _instantiate(scalar: str, sfx: str, vexp: str, lexp: str, log1p: str) -> str:
    return (_TEMPLATE.replace("SCALAR", scalar).replace("SFX", sfx).replace("VEXP", vexp)
            .replace("LEXP", lexp).replace("LOG1P", log1p))


_SOURCE = (_COMMON + _instantiate("float", "f32", "ss_vexp_f32", "expf", "log1pf")
           + _instantiate("double", "f64", "exp", "exp", "log1p"))

_FWD_ARGS = [PTR] * 13 + [I64] * 10
_BWD_ARGS = [PTR] * 20 + [I64] * 10

LIB = CKernel("selective_scan", _SOURCE, {
    "ss_fwd_f32": _FWD_ARGS, "ss_fwd_f64": _FWD_ARGS,
    "ss_bwd_f32": _BWD_ARGS, "ss_bwd_f64": _BWD_ARGS,
})
