"""Fused C loops for the selective scan (forward and backward), compiled on first use by ``_cpu_jit``.

One OpenMP task per (batch, dim) row; the N-vector state h lives on the stack (in registers for
N = 16, which gets its own constant-N instance) and the row makes one pass over L, so nothing of
size (batch, dim, L, N) ever exists. B and C arrive transposed to (batch, G, L, N) so that each
time step reads one contiguous N-vector. The pointwise parts (dl = softplus(delta + bias), the
silu(z) gate and their derivatives) run in a vectorised pre-pass over each row into per-thread
row buffers, so the whole op is one pass over the inputs.

Forward (per row; at every sequence start the carried state is replaced by that sequence's h_{-1}, its
initial state or 0: ``_seqs``), dl_t = [softplus](delta_t + bias),
gate_t = silu(z_t) (1 without z):
    a_t = exp(dl_t A);  h_t = a_t h_{t-1} + dl_t u_t B_t;  y_t = (C_t . h_t + D u_t) * gate_t
    h just before every multiple of K steps is kept as a checkpoint for the backward.

Backward, given dy_t = dout_t * gate_t (reverse scan, states recomputed chunk by chunk of K steps
from the checkpoints):
    g_t  = dy_t C_t + a_{t+1} g_{t+1}  (+ dlast at a sequence end; nothing flows across a start,
           where d h_{-1} = a_t g_t goes to the sequence's initial state)
    dC_t += dy_t h_t;  dB_t += g_t dl_t u_t;  du_t = D dy_t + dl_t (g_t . B_t)
    ddl_t = g_t . (a_t h_{t-1} A + B_t u_t);  dA += g_t a_t h_{t-1} dl_t;  dD += dy_t u_t
    ddelta_t = ddl_t sigmoid(delta_t + bias) (softplus);  dz_t = dout_t (C_t . h_t + D u_t) silu'(z_t)
dB, dC are summed over the channels of a group in per-thread buffers, added together at the end.

float32 uses the branch-free exp of ``_cpu_math`` and log1p on [0, 1] (atanh series), which the
compiler vectorises; float64 uses libm's exp and log1p.
"""
from __future__ import annotations

from .._cpu_jit import CKernel, I64, PTR
from .._cpu_math import EXP_F32_SOURCE

__all__ = ["LIB", "chunk_for", "COMMON_SOURCE"]


def chunk_for(N: int) -> int:
    """Checkpoint spacing K (time steps) of the C kernels for state size N. The backward's per-chunk buffers
    grow with K N (the blocked kernels' lane-wise dB / dC sums, K x NS vectors per block of a group, the
    states and decays of a chunk): past N = 32 they outgrow L2 at K = 64. Forward+backward at K = 32 against
    K = 64 (b1 d1536 L2048 float32, 2 threads, interleaved, session 12): N 64 0.82-0.90x (per-channel loops
    0.90x), N 128 0.73x, N 256 0.96x; N 32 0.97x, N 16 0.99-1.09x (K = 16: N 64 1.02x, N 128 0.81x)."""
    return 64 if N <= 32 else 32

_COMMON = r"""
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")   /* N = 16 floats = one zmm register */
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
""" + EXP_F32_SOURCE + r"""
/* log1p(e) for e in [0, 1]: 2 atanh(s), s = e / (2 + e) <= 1/3, odd series to s^13 (~1e-8 relative) */
static inline float ss_log1p01_f32(float e) {
    const float s = e / (2.0f + e), s2 = s * s;
    float p = 1.0f / 13;
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}
"""

_PREP_TEMPLATE = r"""
/* per-row pointwise pre-pass (vectorised): dl = softplus(delta + bias) or delta + bias,
   sg = d dl / d delta (sigmoid(delta + bias) or 1); gate = silu(z), sz = sigmoid(z) */
static inline void ss_prep_delta_SFX(const SCALAR* dr, SCALAR bias, int64_t softplus, SCALAR* dl, SCALAR* sg, int64_t L)
{
    if (!softplus) {
        for (int64_t t = 0; t < L; t++) { dl[t] = dr[t] + bias; if (sg) sg[t] = 1; }
        return;
    }
    #pragma omp simd
    for (int64_t t = 0; t < L; t++) {
        const SCALAR raw = dr[t] + bias;
        const SCALAR e = VEXP(-(raw < 0 ? -raw : raw));                  /* exp(-|raw|) in (0, 1] */
        const SCALAR pos = raw > 0 ? raw : (SCALAR)0;
        dl[t] = raw > (SCALAR)20 ? raw : pos + LOG1P01(e);
        if (sg) sg[t] = raw >= 0 ? (SCALAR)1 / ((SCALAR)1 + e) : e / ((SCALAR)1 + e);
    }
}

static inline void ss_prep_gate_SFX(const SCALAR* zr, SCALAR* gate, SCALAR* sz, int64_t L)
{
    #pragma omp simd
    for (int64_t t = 0; t < L; t++) {
        const SCALAR zz = zr[t];
        const SCALAR e = VEXP(-(zz < 0 ? -zz : zz));
        const SCALAR s = zz >= 0 ? (SCALAR)1 / ((SCALAR)1 + e) : e / ((SCALAR)1 + e);
        gate[t] = zz * s;
        if (sz) sz[t] = s;
    }
}
"""

_TEMPLATE = r"""
/* sum of p[0..N): a halving tree for N = 16 (vector adds; an omp-simd reduction would end in
   16 dependent scalar adds per time step), a plain loop otherwise. p is scratch. */
static inline __attribute__((always_inline)) SCALAR ss_hsum_SFX(SCALAR* p, const int64_t N)
{
    if (N == 16) {
        for (int n = 0; n < 8; n++) p[n] += p[n + 8];
        for (int n = 0; n < 4; n++) p[n] += p[n + 4];
        return (p[0] + p[2]) + (p[1] + p[3]);
    }
    SCALAR s = 0;
    for (int64_t n = 0; n < N; n++) s += p[n];
    return s;
}


/* one row (b, d) of the forward; N is a compile-time constant where the caller passes a literal.
   Per chunk of K steps: first all decays a = exp(dl A) (independent, vectorised: throughput-bound),
   then the recurrence h = a h + dl u B and y = C . h (a short dependency chain per step). */
static inline __attribute__((always_inline)) void ss_fwd_row_SFX(
        const SCALAR* ur, const SCALAR* dlr, const SCALAR* Ar, const SCALAR* Bb, const SCALAR* Cb,
        const SCALAR Dd, const SCALAR* gr, const int32_t* start_id, const int32_t* end_id, SCALAR* yr,
        SCALAR* last_row, SCALAR* ck_row, SCALAR* abuf, const SCALAR* h0_row,
        int64_t L, const int64_t N, int64_t K, int64_t last_stride)
{
    SCALAR h[N];                                           /* h0_row, last_row: sequence i at i * last_stride */
    for (int64_t n = 0; n < N; n++) h[n] = 0;
    for (int64_t t0 = 0, c = 0; t0 < L; t0 += K, c++) {
        const int64_t nt = (t0 + K < L) ? K : L - t0;
        if (ck_row) for (int64_t n = 0; n < N; n++) ck_row[c * N + n] = h[n];
        for (int64_t k = 0; k < nt; k++) {                 /* decays; a = 0 at a start from a zero state */
            const SCALAR dl = dlr[t0 + k];
            SCALAR* ak = abuf + k * N;
            if (!h0_row && start_id[t0 + k] >= 0) { for (int64_t n = 0; n < N; n++) ak[n] = 0; continue; }
            #pragma omp simd
            for (int64_t n = 0; n < N; n++) ak[n] = VEXP(dl * Ar[n]);
        }
        for (int64_t k = 0; k < nt; k++) {
            const int64_t t = t0 + k;
            const SCALAR x = ur[t], dlx = dlr[t] * x;
            const SCALAR* ak = abuf + k * N;
            const SCALAR* Bp = Bb + t * N;
            const SCALAR* Cp = Cb + t * N;
            SCALAR p[N];
            if (h0_row && start_id[t] >= 0) for (int64_t n = 0; n < N; n++) h[n] = h0_row[start_id[t] * last_stride + n];
            #pragma omp simd
            for (int64_t n = 0; n < N; n++) {
                const SCALAR hn = ak[n] * h[n] + dlx * Bp[n];
                h[n] = hn;
                p[n] = Cp[n] * hn;
            }
            SCALAR out = ss_hsum_SFX(p, N) + Dd * x;
            if (gr) out *= gr[t];
            yr[t] = out;
            if (last_row && end_id[t] >= 0) for (int64_t n = 0; n < N; n++) last_row[end_id[t] * last_stride + n] = h[n];
        }
    }
}

void ss_fwd_SFX(const SCALAR* u, const SCALAR* delta, const SCALAR* A, const SCALAR* Bt, const SCALAR* Ct,
                const SCALAR* Dv, const SCALAR* z, const SCALAR* dbias, const SCALAR* h0,
                const int32_t* start_id, const int32_t* end_id, SCALAR* y, SCALAR* last, SCALAR* ckpt,
                int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t GB, int64_t GC, int64_t nseq,
                int64_t K, int64_t softplus, int64_t nthreads)
{
    const int64_t rows = batch * dim, nck = (L + K - 1) / K;
    #pragma omp parallel num_threads(nthreads)
    {
        SCALAR* dl = (SCALAR*)malloc(sizeof(SCALAR) * (L > 0 ? L : 1));
        SCALAR* gate = z ? (SCALAR*)malloc(sizeof(SCALAR) * (L > 0 ? L : 1)) : 0;
        SCALAR* abuf = (SCALAR*)malloc(sizeof(SCALAR) * K * N);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const int64_t b = r / dim, d = r % dim;
            const SCALAR* Bb = Bt + (b * GB + d / (dim / GB)) * L * N;
            const SCALAR* Cb = Ct + (b * GC + d / (dim / GC)) * L * N;
            const SCALAR Dd = Dv ? Dv[d] : (SCALAR)0;
            SCALAR* last_row = last ? last + (b * nseq * dim + d) * N : 0;
            const SCALAR* h0_row = h0 ? h0 + (b * nseq * dim + d) * N : 0;
            SCALAR* ck_row = ckpt ? ckpt + r * nck * N : 0;
            ss_prep_delta_SFX(delta + r * L, dbias ? dbias[d] : (SCALAR)0, softplus, dl, 0, L);
            if (z) ss_prep_gate_SFX(z + r * L, gate, 0, L);
            if (N == 16)
                ss_fwd_row_SFX(u + r * L, dl, A + d * N, Bb, Cb, Dd, gate, start_id, end_id, y + r * L, last_row, ck_row, abuf,
                               h0_row, L, 16, K, dim * N);
            else
                ss_fwd_row_SFX(u + r * L, dl, A + d * N, Bb, Cb, Dd, gate, start_id, end_id, y + r * L, last_row, ck_row, abuf,
                               h0_row, L, N, K, dim * N);
        }
        free(dl); free(gate); free(abuf);
    }
}

/* one row of the backward: recompute each chunk's states from its checkpoint, then reverse-scan it */
static inline __attribute__((always_inline)) void ss_bwd_row_SFX(
        const SCALAR* ur, const SCALAR* dlr, const SCALAR* Ar, const SCALAR* Bb, const SCALAR* Cb,
        const SCALAR Dd, const SCALAR* dyr, const int32_t* start_id, const int32_t* end_id,
        const SCALAR* ck_row, const SCALAR* dlast_row, SCALAR* dur, SCALAR* ddlr, SCALAR* dAr, SCALAR* dDr,
        SCALAR* ypre_r, SCALAR* myBb, SCALAR* myCb, SCALAR* hbuf, SCALAR* abuf, const SCALAR* h0_row, SCALAR* dh0_row,
        int64_t L, const int64_t N, int64_t K, int64_t last_stride)
{
    const int64_t nck = (L + K - 1) / K;
    SCALAR h[N], g[N], dAacc[N], zeros[N];
    SCALAR dDacc = 0;
    for (int64_t n = 0; n < N; n++) { g[n] = 0; dAacc[n] = 0; zeros[n] = 0; }
    for (int64_t c = nck - 1; c >= 0; c--) {
        const int64_t t0 = c * K, t1 = (t0 + K < L) ? t0 + K : L;
        const SCALAR* hck = ck_row + c * N;
        for (int64_t n = 0; n < N; n++) h[n] = hck[n];
        for (int64_t t = t0; t < t1; t++) {              /* the chunk's decays (vectorised, independent) */
            const SCALAR dl = dlr[t];
            SCALAR* ak = abuf + (t - t0) * N;
            #pragma omp simd
            for (int64_t n = 0; n < N; n++) ak[n] = VEXP(dl * Ar[n]);
        }
        for (int64_t t = t0; t < t1; t++) {              /* recompute the chunk's states */
            const int64_t k = t - t0;
            if (start_id[t] >= 0)
                for (int64_t n = 0; n < N; n++) h[n] = h0_row ? h0_row[start_id[t] * last_stride + n] : 0;
            const SCALAR dlx = dlr[t] * ur[t];
            const SCALAR* Bp = Bb + t * N;
            const SCALAR* ak = abuf + k * N;
            SCALAR* hk = hbuf + k * N;
            #pragma omp simd
            for (int64_t n = 0; n < N; n++) {
                const SCALAR hn = ak[n] * h[n] + dlx * Bp[n];
                hk[n] = hn; h[n] = hn;
            }
        }
        for (int64_t t = t1 - 1; t >= t0; t--) {         /* reverse scan through the chunk */
            const int64_t k = t - t0;
            const SCALAR x = ur[t], dl = dlr[t], dy = dyr[t], dlx = dl * x;
            const SCALAR* Bp = Bb + t * N;
            const SCALAR* Cp = Cb + t * N;
            const SCALAR* ak = abuf + k * N;
            const SCALAR* hk = hbuf + k * N;
            const int32_t sid = start_id[t];                 /* h_{t-1}: the sequence's h_{-1} at its start */
            const SCALAR* hp = sid >= 0 ? (h0_row ? h0_row + sid * last_stride : zeros) : (k > 0 ? hbuf + (k - 1) * N : hck);
            if (dlast_row && end_id[t] >= 0)
                for (int64_t n = 0; n < N; n++) g[n] += dlast_row[end_id[t] * last_stride + n];
            SCALAR* mB = myBb + t * N;
            SCALAR* mC = myCb + t * N;
            SCALAR pd[N], pb[N], py[N];
            #pragma omp simd
            for (int64_t n = 0; n < N; n++) {
                const SCALAR gn = g[n] + dy * Cp[n];
                const SCALAR ah = ak[n] * hp[n];
                py[n] = Cp[n] * hk[n];
                mC[n] += dy * hk[n];
                mB[n] += gn * dlx;
                pd[n] = gn * (ah * Ar[n] + Bp[n] * x);
                dAacc[n] += gn * ah * dl;
                pb[n] = gn * Bp[n];
                g[n] = gn * ak[n];
            }
            if (sid >= 0) {                                  /* d h_{-1}; nothing flows across a start */
                if (dh0_row) for (int64_t n = 0; n < N; n++) dh0_row[sid * last_stride + n] = g[n];
                for (int64_t n = 0; n < N; n++) g[n] = 0;
            }
            const SCALAR ddl = ss_hsum_SFX(pd, N), gB = ss_hsum_SFX(pb, N);
            if (ypre_r) ypre_r[t] = ss_hsum_SFX(py, N) + Dd * x;
            dDacc += dy * x;
            dur[t] = dy * Dd + dl * gB;
            ddlr[t] = ddl;
        }
    }
    for (int64_t n = 0; n < N; n++) dAr[n] = dAacc[n];
    *dDr = dDacc;
}

void ss_bwd_SFX(const SCALAR* u, const SCALAR* delta, const SCALAR* A, const SCALAR* Bt, const SCALAR* Ct,
                const SCALAR* Dv, const SCALAR* z, const SCALAR* dbias, const SCALAR* h0,
                const int32_t* start_id, const int32_t* end_id, const SCALAR* ckpt, const SCALAR* dout, const SCALAR* dlast,
                SCALAR* du, SCALAR* ddelta, SCALAR* dA, SCALAR* dBt, SCALAR* dCt, SCALAR* dD, SCALAR* dz, SCALAR* dh0,
                int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t GB, int64_t GC, int64_t nseq,
                int64_t K, int64_t softplus, int64_t nthreads)
{
    const int64_t rows = batch * dim, nck = (L + K - 1) / K;
    const int64_t nB = batch * GB * L * N, nC = batch * GC * L * N;
    #pragma omp parallel num_threads(nthreads)
    {
        const int64_t Lb = L > 0 ? L : 1;
        SCALAR* hbuf = (SCALAR*)malloc(sizeof(SCALAR) * K * N);
        SCALAR* abuf = (SCALAR*)malloc(sizeof(SCALAR) * K * N);
        SCALAR* dl = (SCALAR*)malloc(sizeof(SCALAR) * Lb);
        SCALAR* sg = (SCALAR*)malloc(sizeof(SCALAR) * Lb);
        SCALAR* dy = (SCALAR*)malloc(sizeof(SCALAR) * Lb);
        SCALAR* sz = z ? (SCALAR*)malloc(sizeof(SCALAR) * Lb) : 0;
        SCALAR* ypre = z ? (SCALAR*)malloc(sizeof(SCALAR) * Lb) : 0;
        SCALAR* myB = (SCALAR*)calloc(nB > 0 ? nB : 1, sizeof(SCALAR));
        SCALAR* myC = (SCALAR*)calloc(nC > 0 ? nC : 1, sizeof(SCALAR));
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const int64_t b = r / dim, d = r % dim;
            const int64_t gb = b * GB + d / (dim / GB), gc = b * GC + d / (dim / GC);
            const SCALAR Dd = Dv ? Dv[d] : (SCALAR)0;
            const SCALAR* dlast_row = dlast ? dlast + (b * nseq * dim + d) * N : 0;
            const SCALAR* h0_row = h0 ? h0 + (b * nseq * dim + d) * N : 0;      /* dh0 (zeroed) laid out alike */
            SCALAR* dh0_row = dh0 ? dh0 + (b * nseq * dim + d) * N : 0;
            const SCALAR* dor = dout + r * L;
            ss_prep_delta_SFX(delta + r * L, dbias ? dbias[d] : (SCALAR)0, softplus, dl, sg, L);
            if (z) {
                ss_prep_gate_SFX(z + r * L, dy, sz, L);                  /* dy = silu(z) for now */
                for (int64_t t = 0; t < L; t++) dy[t] *= dor[t];
            } else {
                for (int64_t t = 0; t < L; t++) dy[t] = dor[t];
            }
            if (N == 16)
                ss_bwd_row_SFX(u + r * L, dl, A + d * N, Bt + gb * L * N, Ct + gc * L * N, Dd, dy,
                               start_id, end_id, ckpt + r * nck * N, dlast_row, du + r * L, ddelta + r * L, dA + r * N, dD + r,
                               ypre, myB + gb * L * N, myC + gc * L * N, hbuf, abuf, h0_row, dh0_row, L, 16, K, dim * N);
            else
                ss_bwd_row_SFX(u + r * L, dl, A + d * N, Bt + gb * L * N, Ct + gc * L * N, Dd, dy,
                               start_id, end_id, ckpt + r * nck * N, dlast_row, du + r * L, ddelta + r * L, dA + r * N, dD + r,
                               ypre, myB + gb * L * N, myC + gc * L * N, hbuf, abuf, h0_row, dh0_row, L, N, K, dim * N);
            SCALAR* ddr = ddelta + r * L;                                /* ddl -> ddelta */
            for (int64_t t = 0; t < L; t++) ddr[t] *= sg[t];
            if (z) {
                const SCALAR* zr = z + r * L;
                SCALAR* dzr = dz + r * L;
                for (int64_t t = 0; t < L; t++)
                    dzr[t] = dor[t] * ypre[t] * sz[t] * ((SCALAR)1 + zr[t] * ((SCALAR)1 - sz[t]));
            }
        }
        #pragma omp critical
        {
            for (int64_t i = 0; i < nB; i++) dBt[i] += myB[i];
            for (int64_t i = 0; i < nC; i++) dCt[i] += myC[i];
        }
        free(hbuf); free(abuf); free(dl); free(sg); free(dy); free(sz); free(ypre); free(myB); free(myC);
    }
}
"""


def _instantiate(template: str, scalar: str, sfx: str, vexp: str, log1p01: str) -> str:
    return (template.replace("SCALAR", scalar).replace("SFX", sfx).replace("VEXP", vexp)
            .replace("LOG1P01", log1p01))


# the float32 exp / log1p and pre-passes, shared with the channel-blocked kernels (cpu_block_kernel)
COMMON_SOURCE = _COMMON + _instantiate(_PREP_TEMPLATE, "float", "f32", "cpu_exp_f32", "ss_log1p01_f32")
_SOURCE = (COMMON_SOURCE + _instantiate(_TEMPLATE, "float", "f32", "cpu_exp_f32", "ss_log1p01_f32")
           + _instantiate(_PREP_TEMPLATE + _TEMPLATE, "double", "f64", "exp", "log1p"))

_FWD_ARGS = [PTR] * 14 + [I64] * 10
_BWD_ARGS = [PTR] * 22 + [I64] * 10

LIB = CKernel("selective_scan", _SOURCE, {
    "ss_fwd_f32": _FWD_ARGS, "ss_fwd_f64": _FWD_ARGS,
    "ss_bwd_f32": _BWD_ARGS, "ss_bwd_f64": _BWD_ARGS,
})
