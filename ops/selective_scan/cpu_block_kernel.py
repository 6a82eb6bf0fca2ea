"""Channel-blocked C kernels of the selective scan (float32, N = 16): 16 channels per vector.

``cpu_kernel`` puts the N state entries of one channel in a vector, so every time step ends in
a horizontal sum (y_t = C_t . h_t) on the recurrence's critical path. Here the 16 lanes of a
vector are 16 channels d0..d0+15 of one B/C group instead, and the N = 16 state entries are 16
separate vectors h[n] (lanes = channels):

    a[n] = exp(dl_t A[:, n]);  h[n] = a[n] h[n] + (dl_t u_t) B_t[n];  y_t = sum_n C_t[n] h[n] + D u_t

B_t[n], C_t[n] are scalars shared by the block's channels, broadcast from B, C transposed to
(batch, G, L, N) (one cache line per step; in the (N, L) layout the 2N rows 4 KiB apart would
all fall into one L1 set and thrash it), the sum over n is a per-lane FMA chain (no
horizontal sum), and the 16 recurrences per step are independent chains that hide each other's
latency. u, dl, the gate (and dy in the backward) are transposed per chunk of K steps into
(K, 16) tiles; y, du, ddelta, dz are transposed back.

Backward (same equations as ``cpu_kernel``'s docstring; states and decays recomputed per chunk
of K steps from the checkpoints and kept for the chunk's reverse pass): ddl_t, du_t, ypre_t are
per-lane sums over n; only dB_t[n] = sum_d g dl u and dC_t[n] = sum_d dy h are sums over the lanes, done for all 16
n at once by a transpose-and-add tree of 15 two-vector shuffles per step.

Used when the compiler has ``__builtin_shufflevector`` (gcc >= 12, clang), the dtype is float32,
N = 16 and dim // G is a multiple of 16 for B and C; otherwise ``cpu_kernel``'s row kernels run.
"""
from __future__ import annotations

from .._cpu_jit import CKernel, I64, PTR
from .cpu_kernel import CHUNK, COMMON_SOURCE

__all__ = ["BLK_LIB", "WIDTH"]

WIDTH = 16  # channels per block = float32 lanes of one 512-bit vector

_SOURCE = COMMON_SOURCE + r"""
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
#define W 16
#define NS 16

static inline vf vload(const float* p) { vf v; memcpy(&v, p, sizeof(v)); return v; }
static inline void vstore(float* p, vf v) { memcpy(p, &v, sizeof(v)); }
static inline vf vsel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }

/* exp on 16 lanes: x = k ln2 + r (Cody-Waite, k = round(x / ln2), |r| <= ln2/2), e^r by a degree-6
   minimax polynomial (2.1e-9 relative on |r| <= 0.354), times 2^k; the tests check <= 2 ulp from
   torch.exp on a dense grid of [-87, 0] (ss_exp_blk_f32). AVX-512: vscalefps applies 2^k with correct
   underflow to 0 and overflow to inf, so only -inf needs a clamp. */
/* Estrin's scheme (dependency depth 4 instead of Horner's 6: these exps sit on the loops' critical path) */
static inline vf exp_poly(vf r) {
    const vf r2 = r * r;
    const vf p01 = r + 1.0f, p23 = r * 1.666640043e-01f + 4.999999106e-01f;
    const vf p456 = (r * 8.376488462e-03f + 4.166835546e-02f) + r2 * 1.383473864e-03f;
    return p01 + r2 * (p23 + r2 * p456);
}
#if defined(__AVX512F__)
#include <immintrin.h>
static inline vf vexp(vf x) {
    const __m512 xv = _mm512_max_ps((__m512)x, _mm512_set1_ps(-104.0f));      /* -inf -> 0, not NaN */
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(xv, _mm512_set1_ps(1.4426950408889634f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), xv);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.4286068203094172e-06f), r);
    const vf rv = (vf)r;
    return (vf)_mm512_scalef_ps((__m512)exp_poly(rv), k);
}
#else
static inline vf vexp(vf x) {
    const vf lo = (vf){} - 87.0f, hi = (vf){} + 88.0f;
    x = vsel(x < lo, lo, x);
    x = vsel(x > hi, hi, x);
    const vf kf = (x * 1.4426950408889634f + 12582912.0f) - 12582912.0f;
    vf r = x - kf * 0.693145751953125f;
    r = r - kf * 1.4286068203094172e-06f;
    const vi bits = (__builtin_convertvector(kf, vi) + 127) << 23;
    return exp_poly(r) * (vf)bits;
}
#endif

/* level of the transpose-and-add tree: lanes with (lane & s) == 0 get p folded by s, the others q folded by s */
#define FOLD(p, q, s) (__builtin_shufflevector(p, q, SEL_##s) + __builtin_shufflevector(p, q, SWP_##s))
#define SEL_8 0,1,2,3,4,5,6,7,24,25,26,27,28,29,30,31
#define SWP_8 8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23
#define SEL_4 0,1,2,3,20,21,22,23,8,9,10,11,28,29,30,31
#define SWP_4 4,5,6,7,16,17,18,19,12,13,14,15,24,25,26,27
#define SEL_2 0,1,18,19,4,5,22,23,8,9,26,27,12,13,30,31
#define SWP_2 2,3,16,17,6,7,20,21,10,11,24,25,14,15,28,29
#define SEL_1 0,17,2,19,4,21,6,23,8,25,10,27,12,29,14,31
#define SWP_1 1,16,3,18,5,20,7,22,9,24,11,26,13,28,15,30

/* out[n] += sum over lanes of x[n], n = 0..15. Lane l of the tree's result holds the sum of
   x[bitreverse4(l)], so the inputs are taken in bit-reversed order and lane l holds n = l. */
static inline void vreduce_add(const vf* x, float* out) {
    static const int br[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
    vf r1[8], r2[4], r3[2];
    for (int i = 0; i < 8; i++) r1[i] = FOLD(x[br[2 * i]], x[br[2 * i + 1]], 8);
    for (int i = 0; i < 4; i++) r2[i] = FOLD(r1[2 * i], r1[2 * i + 1], 4);
    for (int i = 0; i < 2; i++) r3[i] = FOLD(r2[2 * i], r2[2 * i + 1], 2);
    vstore(out, vload(out) + FOLD(r3[0], r3[1], 1));
}

/* in-register 16 x 16 transpose: swap the off-diagonal blocks of size 8, then 4, 2, 1 */
#define TA_8 0,1,2,3,4,5,6,7,16,17,18,19,20,21,22,23
#define TB_8 8,9,10,11,12,13,14,15,24,25,26,27,28,29,30,31
#define TA_4 0,1,2,3,16,17,18,19,8,9,10,11,24,25,26,27
#define TB_4 4,5,6,7,20,21,22,23,12,13,14,15,28,29,30,31
#define TA_2 0,1,16,17,4,5,20,21,8,9,24,25,12,13,28,29
#define TB_2 2,3,18,19,6,7,22,23,10,11,26,27,14,15,30,31
#define TA_1 0,16,2,18,4,20,6,22,8,24,10,26,12,28,14,30
#define TB_1 1,17,3,19,5,21,7,23,9,25,11,27,13,29,15,31
#define TSTAGE(m, d) for (int i = 0; i < 16; i++) if (!(i & d)) { \
        const vf a_ = m[i], b_ = m[i + d]; \
        m[i] = __builtin_shufflevector(a_, b_, TA_##d); m[i + d] = __builtin_shufflevector(a_, b_, TB_##d); }
static inline void transpose16(vf* m) { TSTAGE(m, 8) TSTAGE(m, 4) TSTAGE(m, 2) TSTAGE(m, 1) }

/* rows r0..r0+15 of X (stride L), steps t0..t0+nt -> tile[k * W + j]; and back (16-step blocks in registers) */
static inline void tile_in(const float* X, int64_t L, int64_t t0, int64_t nt, float* tile) {
    int64_t k0 = 0;
    for (; k0 + 16 <= nt; k0 += 16) {
        vf m[16];
        for (int j = 0; j < W; j++) m[j] = vload(X + j * L + t0 + k0);
        transpose16(m);
        for (int i = 0; i < 16; i++) vstore(tile + (k0 + i) * W, m[i]);
    }
    for (int j = 0; j < W; j++)
        for (int64_t k = k0; k < nt; k++) tile[k * W + j] = X[j * L + t0 + k];
}
static inline void tile_out(const float* tile, int64_t L, int64_t t0, int64_t nt, float* X) {
    int64_t k0 = 0;
    for (; k0 + 16 <= nt; k0 += 16) {
        vf m[16];
        for (int i = 0; i < 16; i++) m[i] = vload(tile + (k0 + i) * W);
        transpose16(m);
        for (int j = 0; j < W; j++) vstore(X + j * L + t0 + k0, m[j]);
    }
    for (int j = 0; j < W; j++)
        for (int64_t k = k0; k < nt; k++) X[j * L + t0 + k] = tile[k * W + j];
}

/* per-block row pre-pass: dl (W rows of L) = [softplus](delta + bias), sg = d dl / d delta, gate/sz from z */
static void blk_prep(const float* delta, const float* dbias, const float* z, int64_t d0, int64_t L, int64_t softplus,
                     float* dl, float* sg, float* gate, float* sz) {
    for (int j = 0; j < W; j++) {
        ss_prep_delta_f32(delta + j * L, dbias ? dbias[d0 + j] : 0.0f, softplus, dl + j * L, sg ? sg + j * L : 0, L);
        if (z) ss_prep_gate_f32(z + j * L, gate + j * L, sz ? sz + j * L : 0, L);
    }
}

/* y = vexp(x) elementwise (for the accuracy test) */
void ss_exp_blk_f32(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i += W) {
        float buf[W] = {0};
        const int64_t m = n - i < W ? n - i : W;
        memcpy(buf, x + i, sizeof(float) * m);
        vstore(buf, vexp(vload(buf)));
        memcpy(y + i, buf, sizeof(float) * m);
    }
}

void ss_fwd_blk_f32(const float* u, const float* delta, const float* A, const float* Bg, const float* Cg,
                    const float* Dv, const float* z, const float* dbias, const float* h0,
                    const int32_t* reset, const int32_t* end_id, float* y, float* last, float* ckpt,
                    int64_t batch, int64_t dim, int64_t L, int64_t GB, int64_t GC, int64_t nseq,
                    int64_t K, int64_t softplus, int64_t nthreads)
{
    const int64_t nblk = batch * (dim / W), nck = (L + K - 1) / K;
    #pragma omp parallel num_threads(nthreads)
    {
        const int64_t Lb = L > 0 ? L : 1;
        float* dl = (float*)malloc(sizeof(float) * W * Lb);
        float* gate = z ? (float*)malloc(sizeof(float) * W * Lb) : 0;
        float* tu = (float*)malloc(sizeof(float) * K * W * 4);
        float *tdl = tu + K * W, *tg = tdl + K * W, *ty = tg + K * W;
        #pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t b = blk / (dim / W), d0 = (blk % (dim / W)) * W, r0 = b * dim + d0;
            const float* Bb = Bg + (b * GB + d0 / (dim / GB)) * NS * L;              /* (L, N) of this block's group */
            const float* Cb = Cg + (b * GC + d0 / (dim / GC)) * NS * L;
            vf Av[NS], h[NS], Dd;
            for (int n = 0; n < NS; n++)
                for (int j = 0; j < W; j++) { Av[n][j] = A[(d0 + j) * NS + n]; h[n][j] = h0 ? h0[(r0 + j) * NS + n] : 0.0f; }
            for (int j = 0; j < W; j++) Dd[j] = Dv ? Dv[d0 + j] : 0.0f;
            blk_prep(delta + r0 * L, dbias, z ? z + r0 * L : 0, d0, L, softplus, dl, 0, gate, 0);
            for (int64_t t0 = 0, c = 0; t0 < L; t0 += K, c++) {
                const int64_t nt = (t0 + K < L) ? K : L - t0;
                if (ckpt) for (int j = 0; j < W; j++) for (int n = 0; n < NS; n++)
                    ckpt[((r0 + j) * nck + c) * NS + n] = h[n][j];
                tile_in(u + r0 * L, L, t0, nt, tu);
                tile_in(dl, L, t0, nt, tdl);
                if (z) tile_in(gate, L, t0, nt, tg);
                for (int64_t k = 0; k < nt; k++) {
                    const int64_t t = t0 + k;
                    const vf x = vload(tu + k * W), dlv = vload(tdl + k * W), dlx = dlv * x;
                    if (reset[t]) for (int n = 0; n < NS; n++) h[n] = (vf){};
                    vf acc0 = Dd * x, acc1 = (vf){};
                    for (int n = 0; n < NS; n += 2) {
                        const vf a0 = vexp(dlv * Av[n]), a1 = vexp(dlv * Av[n + 1]);
                        h[n] = a0 * h[n] + dlx * Bb[t * NS + n];
                        h[n + 1] = a1 * h[n + 1] + dlx * Bb[t * NS + (n + 1)];
                        acc0 += Cb[t * NS + n] * h[n];
                        acc1 += Cb[t * NS + (n + 1)] * h[n + 1];
                    }
                    vf out = acc0 + acc1;
                    if (z) out *= vload(tg + k * W);
                    vstore(ty + k * W, out);
                    if (last && end_id[t] >= 0)
                        for (int j = 0; j < W; j++) for (int n = 0; n < NS; n++)
                            last[((b * nseq + end_id[t]) * dim + d0 + j) * NS + n] = h[n][j];
                }
                tile_out(ty, L, t0, nt, y + r0 * L);
            }
        }
        free(dl); free(gate); free(tu);
    }
}

void ss_bwd_blk_f32(const float* u, const float* delta, const float* A, const float* Bg, const float* Cg,
                    const float* Dv, const float* z, const float* dbias, const int32_t* reset, const int32_t* end_id,
                    const float* ckpt, const float* dout, const float* dlast,
                    float* du, float* ddelta, float* dA, float* dBt, float* dCt, float* dD, float* dz, float* dh0,
                    float* ddb_rows,
                    int64_t batch, int64_t dim, int64_t L, int64_t GB, int64_t GC, int64_t nseq,
                    int64_t K, int64_t softplus, int64_t nthreads)
{
    const int64_t nblk = batch * (dim / W), nck = (L + K - 1) / K;
    const int64_t nB = batch * GB * L * NS, nC = batch * GC * L * NS;
    #pragma omp parallel num_threads(nthreads)
    {
        const int64_t Lb = L > 0 ? L : 1;
        float* dl = (float*)malloc(sizeof(float) * W * Lb);
        float* sg = (float*)malloc(sizeof(float) * W * Lb);
        float* gate = z ? (float*)malloc(sizeof(float) * W * Lb) : 0;
        float* sz = z ? (float*)malloc(sizeof(float) * W * Lb) : 0;
        float* ypre = z ? (float*)malloc(sizeof(float) * W * Lb) : 0;              /* C . h + D u, rows of L */
        void* hmem = malloc(sizeof(float) * (K + 1) * NS * W + 64);              /* h_{t0-1}, h_t0, ..., per chunk */
        float* hbuf = (float*)(((uintptr_t)hmem + 63) & ~(uintptr_t)63);           /* vf needs 64-byte alignment */
        void* amem = malloc(sizeof(float) * K * NS * W + 64);                      /* decays a_t of the chunk */
        float* abuf = (float*)(((uintptr_t)amem + 63) & ~(uintptr_t)63);
        float* tu = (float*)malloc(sizeof(float) * K * W * 8);
        float *tdl = tu + K * W, *tdy = tdl + K * W, *tdo = tdy + K * W, *tg = tdo + K * W;
        float *tdu = tg + K * W, *tddl = tdu + K * W, *typ = tddl + K * W;
        float* myB = (float*)calloc(nB > 0 ? nB : 1, sizeof(float));            /* (b, GB, L, N) */
        float* myC = (float*)calloc(nC > 0 ? nC : 1, sizeof(float));
        #pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t b = blk / (dim / W), d0 = (blk % (dim / W)) * W, r0 = b * dim + d0;
            const int64_t gb = b * GB + d0 / (dim / GB), gc = b * GC + d0 / (dim / GC);
            const float* Bb = Bg + gb * NS * L;
            const float* Cb = Cg + gc * NS * L;
            float* mB = myB + gb * L * NS;
            float* mC = myC + gc * L * NS;
            vf Av[NS], g[NS], dAacc[NS], zeros[NS], Dd, dDacc = (vf){};
            for (int n = 0; n < NS; n++) {
                g[n] = (vf){}; dAacc[n] = (vf){}; zeros[n] = (vf){};
                for (int j = 0; j < W; j++) Av[n][j] = A[(d0 + j) * NS + n];
            }
            for (int j = 0; j < W; j++) Dd[j] = Dv ? Dv[d0 + j] : 0.0f;
            blk_prep(delta + r0 * L, dbias, z ? z + r0 * L : 0, d0, L, softplus, dl, sg, gate, sz);
            for (int64_t c = nck - 1; c >= 0; c--) {
                const int64_t t0 = c * K, nt = (t0 + K < L) ? K : L - t0;
                tile_in(u + r0 * L, L, t0, nt, tu);
                tile_in(dl, L, t0, nt, tdl);
                tile_in(dout + r0 * L, L, t0, nt, tdo);
                if (z) {
                    tile_in(gate, L, t0, nt, tg);
                    for (int64_t i = 0; i < nt * W; i++) tdy[i] = tdo[i] * tg[i];
                } else {
                    for (int64_t i = 0; i < nt * W; i++) tdy[i] = tdo[i];
                }
                vf* H = (vf*)hbuf;                                                  /* H[(k + 1) * NS + n] = h_{t0+k}[n] */
                vf* Ab = (vf*)abuf;                                                 /* Ab[k * NS + n] = a_{t0+k}[n] */
                for (int j = 0; j < W; j++) for (int n = 0; n < NS; n++) H[n][j] = ckpt[((r0 + j) * nck + c) * NS + n];
                for (int64_t k = 0; k < nt; k++) {                                  /* recompute the chunk's states */
                    const int64_t t = t0 + k;
                    const vf dlv = vload(tdl + k * W), dlx = dlv * vload(tu + k * W);
                    const vf* hp = reset[t] ? zeros : H + k * NS;                     /* h_{t-1} = 0 at a start */
                    vf* hk = H + (k + 1) * NS;
                    vf* ak = Ab + k * NS;
                    for (int n = 0; n < NS; n++) {
                        const vf a = vexp(dlv * Av[n]);
                        ak[n] = a;
                        hk[n] = a * hp[n] + dlx * Bb[t * NS + n];
                    }
                }
                for (int64_t k = nt - 1; k >= 0; k--) {                             /* reverse scan through the chunk */
                    const int64_t t = t0 + k;
                    const vf x = vload(tu + k * W), dlv = vload(tdl + k * W), dy = vload(tdy + k * W), dlx = dlv * x;
                    const vf* hp = reset[t] ? zeros : H + k * NS;                     /* h_{t-1} (0 at a start) */
                    const vf* hk = H + (k + 1) * NS;
                    const vf* ak = Ab + k * NS;
                    if (dlast && end_id[t] >= 0)
                        for (int j = 0; j < W; j++) for (int n = 0; n < NS; n++)
                            g[n][j] += dlast[((b * nseq + end_id[t]) * dim + d0 + j) * NS + n];
                    /* ddl = sum_n g (a h_{t-1} A + B u) = sum_n (g a h_{t-1}) A + u (g . B) */
                    vf pdA = (vf){}, pb = (vf){}, py = (vf){}, xb[NS], xc[NS];
                    for (int n = 0; n < NS; n++) {
                        const float Bn = Bb[t * NS + n], Cn = Cb[t * NS + n];
                        const vf gn = g[n] + dy * Cn;
                        const vf ga = gn * ak[n];                                   /* g_{t-1} before a reset */
                        const vf gah = ga * hp[n];                                  /* g a h_{t-1} */
                        py += Cn * hk[n];
                        pdA += gah * Av[n];
                        dAacc[n] += gah * dlv;
                        pb += gn * Bn;
                        xc[n] = dy * hk[n];
                        xb[n] = gn * dlx;
                        g[n] = ga;
                    }
                    if (reset[t]) for (int n = 0; n < NS; n++) g[n] = (vf){};       /* nothing flows across a start */
                    vreduce_add(xb, mB + t * NS);
                    vreduce_add(xc, mC + t * NS);
                    dDacc += dy * x;
                    vstore(tdu + k * W, dy * Dd + dlv * pb);
                    vstore(tddl + k * W, pdA + x * pb);
                    vstore(typ + k * W, py + Dd * x);
                }
                tile_out(tdu, L, t0, nt, du + r0 * L);
                tile_out(tddl, L, t0, nt, ddelta + r0 * L);
                if (z) tile_out(typ, L, t0, nt, ypre);
            }
            for (int j = 0; j < W; j++) {                                            /* row-wise, vectorised */
                float* ddr = ddelta + (r0 + j) * L;                                  /* ddl -> ddelta */
                const float* sgr = sg + j * L;
                float ddsum = 0.0f;                                                  /* d delta_bias of this row */
                #pragma omp simd reduction(+:ddsum)
                for (int64_t t = 0; t < L; t++) { ddr[t] *= sgr[t]; ddsum += ddr[t]; }
                if (ddb_rows) ddb_rows[r0 + j] = ddsum;
                if (z) {                                                             /* dz = dout ypre silu'(z) */
                    const float *zr = z + (r0 + j) * L, *dor = dout + (r0 + j) * L, *yp = ypre + j * L, *s = sz + j * L;
                    float* dzr = dz + (r0 + j) * L;
                    for (int64_t t = 0; t < L; t++) dzr[t] = dor[t] * yp[t] * s[t] * (1.0f + zr[t] * (1.0f - s[t]));
                }
                for (int n = 0; n < NS; n++) {
                    dA[(r0 + j) * NS + n] = dAacc[n][j];
                    if (dh0) dh0[(r0 + j) * NS + n] = g[n][j];                     /* g after t = 0 already carries a_0 */
                }
                dD[r0 + j] = dDacc[j];
            }
        }
        #pragma omp critical
        {
            for (int64_t i = 0; i < nB; i++) dBt[i] += myB[i];
            for (int64_t i = 0; i < nC; i++) dCt[i] += myC[i];
        }
        free(dl); free(sg); free(gate); free(sz); free(ypre); free(hmem); free(amem); free(tu); free(myB); free(myC);
    }
}
"""

_FWD_ARGS = [PTR] * 14 + [I64] * 9
_BWD_ARGS = [PTR] * 22 + [I64] * 9

BLK_LIB = CKernel("selective_scan_blk", _SOURCE, {"ss_fwd_blk_f32": _FWD_ARGS, "ss_bwd_blk_f32": _BWD_ARGS,
                                                  "ss_exp_blk_f32": [PTR, PTR, I64]})
