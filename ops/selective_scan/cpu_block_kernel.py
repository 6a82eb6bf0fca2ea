"""Channel-blocked C kernels of the selective scan (float32, N <= 256): 16 channels per vector.

``cpu_kernel`` puts the N state entries of one channel in a vector, so every time step ends in
a horizontal sum (y_t = C_t . h_t) on the recurrence's critical path. Here the 16 lanes of a
vector are 16 channels d0..d0+15 of one B/C group instead, and the NS state entries are NS
separate vectors h[n] (lanes = channels; NS = N rounded up to a multiple of 16, one library
compiled per NS; the pad entries have A = 0, B = C = 0: they stay 0 and add nothing):

    a[n] = exp(dl_t A[:, n]);  h[n] = a[n] h[n] + (dl_t u_t) B_t[n];  y_t = sum_n C_t[n] h[n] + D u_t

(the decays computed as 2^(dl_t A[:, n] log2 e), A scaled once per block, see vexp2).

B_t[n], C_t[n] are scalars shared by the block's channels, broadcast from B, C transposed to
(batch, G, L, N) (one cache line per step; in the (N, L) layout the 2N rows 4 KiB apart would
all fall into one L1 set and thrash it), the sum over n is a per-lane FMA chain (no
horizontal sum), and the NS recurrences per step are independent chains that hide each other's
latency. u, delta, z (and dout in the backward) are transposed per chunk of K steps into (K, 16)
tiles; the pointwise parts (dl = softplus(delta + bias), silu(z) and their derivatives) are
computed on the tiles in a pass of their own before the step loop (inside it, their chain of exp,
division and series sat in front of each step's 16 exps: the forward was 7-15% slower); y, du,
ddelta, dz are transposed back. Each block reads 16 row segments per chunk, too
many streams for the hardware prefetcher: the loops prefetch the next chunk's lines, one per step.

Backward (same equations as ``cpu_kernel``'s docstring): each thread takes its blocks PB = 4 at a
time and walks the chunks in reverse; per chunk, each block recomputes the chunk's states and
decays from its checkpoint, then runs the reverse pass in parts of 8 state entries (so g and
the dA accumulators of a part stay in registers), both slab by slab (32 or 16 state entries, so the
chunk's states and decays stay L2-sized for any NS; C . h_t for dz adds up across slabs). ddl_t,
du_t, ypre_t are per-lane sums over n.
dB_t[n] = sum_d g dl u and dC_t[n] = sum_d dy h are sums over channels: they are accumulated
lane-wise (one vertical FMA per n) into per-chunk buffers shared by the PB blocks, and summed over
the lanes by a transpose-and-add tree of 15 two-vector shuffles once per chunk step for the PB
blocks together (before: once per block and step, 40% of the reverse pass). Whatever needs no g
(dC_t, ypre_t = C_t . h_t + D u_t, dz_t) is done in the recompute pass, where h_t is at hand; the
reverse pass keeps only what needs g. (Sampled profile of the backward, 1 thread, b1 d1536 N16 L2048:
recompute pass 40% (its exps 24%), reverse pass 21%, pointwise pass 12%, transposes out 9% and in 8%,
lane sums 5%; README, Benchmarks.) dout is read with its strides (channel-last when it is the
gradient of y.transpose(1, 2); an expanded scalar). du, ddelta, dz and the forward's checkpoints go
out with non-temporal stores (see tile_out).

Used when the compiler has ``__builtin_shufflevector`` (gcc >= 12, clang), the dtype is float32 and
N <= MAX_NS; the caller (``cpu.channel_plan``) zero-pads the channels of each B/C group to a multiple of 16
when they are not, up to 1.4x the work; otherwise ``cpu_kernel``'s row kernels run.
Against those (b1 d1536 L2048, 2 threads, README): forward 3.4-5.8x, forward+backward 3.3-4.3x
faster for N = 8 .. 256.
"""
from __future__ import annotations

from .._cpu_jit import CKernel, I64, PTR
from .cpu_kernel import COMMON_SOURCE

__all__ = ["BLK_LIB", "MAX_NS", "WIDTH", "blk_lib", "padded_state"]

WIDTH = 16  # channels per block = float32 lanes of one 512-bit vector
MAX_NS = 256  # largest state size the blocked kernels take; N pads up to a multiple of 16 (see padded_state)


def padded_state(N: int) -> int:
    """The kernels' state size for N state entries: N rounded up to a multiple of 16 (the pad entries have
    A = 0 and B = C = 0, so they stay 0 and add nothing)."""
    return -(-N // WIDTH) * WIDTH

_SOURCE = COMMON_SOURCE + r"""
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
#define W 16
/* NS, the state size (a multiple of 16), is defined in front of this source: one library per NS */

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
/* 2^f = exp_poly(f ln2) with the ln2 folded into the coefficients (c_i ln2^i): one product fewer */
static inline vf exp2_poly(vf f) {
    const vf f2 = f * f;
    const vf p01 = f * 0.6931471805599453f + 1.0f, p23 = f * 5.5503222031e-02f + 2.4022646401e-01f;
    const vf p456 = (f * 1.3402607517e-03f + 9.6185189404e-03f) + f2 * 1.5343474833e-04f;
    return p01 + f2 * (p23 + f2 * p456);
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
/* 2^y on 16 lanes, for the decays e^(dl A) = 2^(dl A log2 e) with A log2 e scaled once per block: k = round(y)
   and f = y - k in [-1/2, 1/2] are exact, so the two-step ln2 reduction of vexp goes (2^f by exp2_poly), and y
   needs no clamp (vscalefps takes any finite k): 5 operations fewer per state entry and step. y must not
   be -inf (inf - inf = NaN): load_params bounds A log2 e below by -1e20, so dl A log2 e stays finite for any
   dl < 3e18. The tests check <= 2 ulp from exp2 on a dense grid of [-126, 0] (ss_exp_blk_f32, base2). */
static inline vf vexp2(vf y) {
    const __m512 k = _mm512_roundscale_ps((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return (vf)_mm512_scalef_ps((__m512)exp2_poly(y - (vf)k), k);
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
static inline vf vexp2(vf y) {
    const vf lo = (vf){} - 126.0f, hi = (vf){} + 127.0f;
    y = vsel(y < lo, lo, y);
    y = vsel(y > hi, hi, y);
    const vf kf = (y + 12582912.0f) - 12582912.0f;
    const vi bits = (__builtin_convertvector(kf, vi) + 127) << 23;
    return exp2_poly(y - kf) * (vf)bits;
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
/* the same from a strided (.., dim, L) view: element (j, t) at X[j * sd + t * sl] (dout may be channel-last,
   i.e. the gradient of a transpose, or an expanded scalar) */
static inline void tile_in_strided(const float* X, int64_t sd, int64_t sl, int64_t t0, int64_t nt, float* tile) {
    if (sl == 1) { tile_in(X, sd, t0, nt, tile); return; }
    if (sd == 1) { for (int64_t k = 0; k < nt; k++) memcpy(tile + k * W, X + (t0 + k) * sl, sizeof(float) * W); return; }
    if (sd == 0) { for (int64_t k = 0; k < nt; k++) vstore(tile + k * W, (vf){} + X[(t0 + k) * sl]); return; }
    for (int64_t k = 0; k < nt; k++) for (int j = 0; j < W; j++) tile[k * W + j] = X[j * sd + (t0 + k) * sl];
}
/* stream = 1: the 16-step blocks go out with non-temporal stores when every row segment is a whole aligned cache
   line. The backward's du, ddelta, dz rows lie L floats apart; for L a multiple of 1024 all 16 rows of a step fall
   into one L1 set, so their lines (fetched for ownership a chunk ahead) are evicted again before the stores reach
   them: the backward was ~10% slower per step at L = 2048 than at L = 2032. Non-temporal stores need no
   ownership read and leave the caches alone: backward kernel 6-9% faster at L = 2048. The forward's y gains
   nothing from them and stays cached for its consumer. */
static inline void tile_out(const float* tile, int64_t L, int64_t t0, int64_t nt, float* X, int stream) {
#if defined(__AVX512F__)
    stream = stream && ((uintptr_t)(X + t0) & 63) == 0 && (L & 15) == 0;
#else
    stream = 0;
#endif
    int64_t k0 = 0;
    for (; k0 + 16 <= nt; k0 += 16) {
        vf m[16];
        for (int i = 0; i < 16; i++) m[i] = vload(tile + (k0 + i) * W);
        transpose16(m);
#if defined(__AVX512F__)
        if (stream) { for (int j = 0; j < W; j++) _mm512_stream_ps(X + j * L + t0 + k0, (__m512)m[j]); continue; }
#endif
        for (int j = 0; j < W; j++) vstore(X + j * L + t0 + k0, m[j]);
    }
    for (int j = 0; j < W; j++)
        for (int64_t k = k0; k < nt; k++) X[j * L + t0 + k] = tile[k * W + j];
}

/* pointwise parts on one step's 16 channels: dl = softplus(raw) (raw if raw > 20) and sg = d dl / d raw =
   sigmoid(raw), or dl = raw, sg = 1 without softplus; gate = silu(z) = z sigmoid(z), sz = sigmoid(z).
   e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3, odd series to s^13 (~1e-8).
   Computed per chunk on the (K, 16) tiles, one vector per step, in a loop whose steps are independent. */
static inline vf vsigmoid_e(vf x, vf e) {                                         /* sigmoid(x) given e = exp(-|x|) */
    const vf r = 1.0f / (1.0f + e);
    return vsel(x >= 0.0f, r, e * r);
}
static inline vf vdelta(vf raw, int64_t softplus, vf* sg) {
    if (!softplus) { if (sg) *sg = (vf){} + 1.0f; return raw; }
    const vf ax = vsel(raw < 0.0f, -raw, raw);
    const vf e = vexp(-ax);
    const vf s = e / (2.0f + e), s2 = s * s;
    vf p = s2 * (1.0f / 13) + 1.0f / 11;
    p = p * s2 + 1.0f / 9; p = p * s2 + 1.0f / 7; p = p * s2 + 1.0f / 5; p = p * s2 + 1.0f / 3; p = p * s2 + 1.0f;
    const vf pos = vsel(raw > 0.0f, raw, (vf){});
    if (sg) *sg = vsigmoid_e(raw, e);
    return vsel(raw > 20.0f, raw, pos + 2.0f * s * p);
}
static inline vf vgate(vf zz, vf* sz) {
    const vf s = vsigmoid_e(zz, vexp(-vsel(zz < 0.0f, -zz, zz)));
    if (sz) *sz = s;
    return zz * s;
}

/* prefetch steps t0 .. t0 + 63 of 16 rows (X: the block's first row, rows S apart), the cache line (k & 48) of
   row (k & 15) at step k: a block reads 16 row segments per chunk, too many streams for the hardware prefetcher */
#define PREFETCH_ROWS(X, S, t0, k, rw) __builtin_prefetch((X) + ((k) & 15) * (S) + (t0) + ((k) & 48), rw)

/* y = vexp(x), or vexp2(x) with base2, elementwise (for the accuracy tests) */
void ss_exp_blk_f32(const float* x, float* y, int64_t n, int64_t base2) {
    for (int64_t i = 0; i < n; i += W) {
        float buf[W] = {0};
        const int64_t m = n - i < W ? n - i : W;
        memcpy(buf, x + i, sizeof(float) * m);
        vstore(buf, base2 ? vexp2(vload(buf)) : vexp(vload(buf)));
        memcpy(y + i, buf, sizeof(float) * m);
    }
}

/* 64-byte aligned blocks for vf buffers (plain C99: no posix_memalign), the malloc'd pointer kept just before */
static void* amalloc(size_t bytes) {
    char* raw = (char*)malloc(bytes + 64 + sizeof(void*));
    if (!raw) return 0;
    char* p = (char*)(((uintptr_t)(raw + sizeof(void*)) + 63) & ~(uintptr_t)63);
    memcpy(p - sizeof(void*), &raw, sizeof(void*));
    return p;
}
static void afree(void* p) {
    if (!p) return;
    void* raw;
    memcpy(&raw, (char*)p - sizeof(void*), sizeof(void*));
    free(raw);
}

/* m[n] lane j = X[j * stride + n] (16 rows of 16 contiguous floats, e.g. a block's (W, N) slice), and back */
static inline void rows_in(const float* X, int64_t stride, vf* m) {
    for (int j = 0; j < W; j++) m[j] = vload(X + j * stride);
    transpose16(m);
}
/* the same for a block's (W, NS) slice: m[n] lane j = X[j * stride + n], n = 0 .. NS - 1, 16 entries at a time */
static inline void rows_in_ns(const float* X, int64_t stride, vf* m) {
    for (int q = 0; q < NS; q += 16) rows_in(X + q, stride, m + q);
}
/* stream = 1 as in tile_out: the forward's checkpoints are written once and read back only by the backward */
static inline void rows_out(const vf* m, int64_t stride, float* X, int stream) {
    vf t[16];
    for (int n = 0; n < 16; n++) t[n] = m[n];
    transpose16(t);
#if defined(__AVX512F__)
    if (stream && ((uintptr_t)X & 63) == 0 && (stride & 15) == 0) {
        for (int j = 0; j < W; j++) _mm512_stream_ps(X + j * stride, (__m512)t[j]);
        return;
    }
#endif
    for (int j = 0; j < W; j++) vstore(X + j * stride, t[j]);
}
static inline void rows_out_ns(const vf* m, int64_t stride, float* X, int stream) {
    for (int q = 0; q < NS; q += 16) rows_out(m + q, stride, X + q, stream);
}

/* Av[n] = A[:, n] log2 e, at least -1e20 (the decays are vexp2(dl Av[n]) = e^(dl A); the bound keeps -inf out of
   vexp2 and changes no decay unless dl < 1e-18), Dd = D, Bias = delta_bias of the block's channels */
static inline void load_params(const float* A, const float* Dv, const float* dbias, int64_t d0, vf* Av, vf* Dd, vf* Bias) {
    rows_in_ns(A + d0 * NS, NS, Av);
    const vf lo = (vf){} - 1e20f;
    for (int n = 0; n < NS; n++) { Av[n] *= 1.4426950408889634f; Av[n] = vsel(Av[n] < lo, lo, Av[n]); }
    for (int j = 0; j < W; j++) { (*Dd)[j] = Dv ? Dv[d0 + j] : 0.0f; (*Bias)[j] = dbias ? dbias[d0 + j] : 0.0f; }
}

void ss_fwd_blk_f32(const float* u, const float* delta, const float* A, const float* Bg, const float* Cg,
                    const float* Dv, const float* z, const float* dbias, const float* h0,
                    const int32_t* start_id, const int32_t* end_id, float* y, float* last, float* ckpt,
                    int64_t batch, int64_t dim, int64_t L, int64_t GB, int64_t GC, int64_t nseq,
                    int64_t K, int64_t softplus, int64_t nthreads)
{
    const int64_t nblk = batch * (dim / W), nck = (L + K - 1) / K;
    #pragma omp parallel num_threads(nthreads)
    {
        float* tu = (float*)amalloc(sizeof(float) * K * W * 4);
        float *tdl = tu + K * W, *tz = tdl + K * W, *ty = tz + K * W;
        #pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t b = blk / (dim / W), d0 = (blk % (dim / W)) * W, r0 = b * dim + d0;
            const float* Bb = Bg + (b * GB + d0 / (dim / GB)) * NS * L;              /* (L, N) of this block's group */
            const float* Cb = Cg + (b * GC + d0 / (dim / GC)) * NS * L;
            vf Av[NS], h[NS], Dd, Bias;
            load_params(A, Dv, dbias, d0, Av, &Dd, &Bias);
            for (int n = 0; n < NS; n++) h[n] = (vf){};
            for (int64_t t0 = 0, c = 0; t0 < L; t0 += K, c++) {
                const int64_t nt = (t0 + K < L) ? K : L - t0;
                if (ckpt) rows_out_ns(h, nck * NS, ckpt + (r0 * nck + c) * NS, 1);
                tile_in(u + r0 * L, L, t0, nt, tu);
                tile_in(delta + r0 * L, L, t0, nt, tdl);
                if (z) tile_in(z + r0 * L, L, t0, nt, tz);
                for (int64_t k = 0; k < nt; k++) {                                  /* pointwise parts, independent steps */
                    vstore(tdl + k * W, vdelta(vload(tdl + k * W) + Bias, softplus, 0));
                    if (z) vstore(tz + k * W, vgate(vload(tz + k * W), 0));
                }
                for (int64_t k = 0; k < nt; k++) {
                    const int64_t t = t0 + k;
                    if (t0 + K < L && (k & 48) < K) {                                /* the next chunk's rows */
                        PREFETCH_ROWS(u + r0 * L, L, t0 + K, k, 0); PREFETCH_ROWS(delta + r0 * L, L, t0 + K, k, 0);
                        if (z) PREFETCH_ROWS(z + r0 * L, L, t0 + K, k, 0);
                        PREFETCH_ROWS(y + r0 * L, L, t0 + K, k, 1);
                    }
                    const vf x = vload(tu + k * W), dlv = vload(tdl + k * W), dlx = dlv * x;
                    if (start_id[t] >= 0) {                                          /* h_{-1} of the sequence */
                        vf hin[NS];                                                  /* (h stays in registers) */
                        if (h0) rows_in_ns(h0 + ((b * nseq + start_id[t]) * dim + d0) * NS, NS, hin);
                        for (int n = 0; n < NS; n++) h[n] = h0 ? hin[n] : (vf){};
                    }
                    vf acc0 = Dd * x, acc1 = (vf){};
                    for (int n = 0; n < NS; n += 2) {
                        const vf a0 = vexp2(dlv * Av[n]), a1 = vexp2(dlv * Av[n + 1]);
                        h[n] = a0 * h[n] + dlx * Bb[t * NS + n];
                        h[n + 1] = a1 * h[n + 1] + dlx * Bb[t * NS + (n + 1)];
                        acc0 += Cb[t * NS + n] * h[n];
                        acc1 += Cb[t * NS + (n + 1)] * h[n + 1];
                    }
                    vf out = acc0 + acc1;
                    if (z) out *= vload(tz + k * W);
                    vstore(ty + k * W, out);
                    if (last && end_id[t] >= 0)
                        for (int j = 0; j < W; j++) for (int n = 0; n < NS; n++)
                            last[((b * nseq + end_id[t]) * dim + d0 + j) * NS + n] = h[n][j];
                }
                tile_out(ty, L, t0, nt, y + r0 * L, 0);
            }
        }
#if defined(__AVX512F__)
        _mm_sfence();                                                               /* the streamed checkpoints are visible */
#endif
        afree(tu);
    }
}

/* Backward, per thread: its blocks are taken PB at a time; for each chunk in reverse, each of the PB blocks
   recomputes the chunk's states and decays from its checkpoint, then runs the reverse pass in NS / NH parts of
   NH state entries (the part's g and dA accumulators stay in registers). dB_t, dC_t are accumulated lane-wise
   (vertical FMAs) into per-chunk buffers shared by the PB blocks and summed over the lanes once per chunk,
   so the transpose-and-add tree runs once per group of PB blocks instead of once per block. */
#define NH 8
#define PB 4
/* the recompute and reverse passes run over slabs of SLAB state entries: the per-chunk states and decays
   ((K + 1) SLAB and K SLAB vectors) stay in L2 for any NS */
#ifndef SLAB
#define SLAB (NS % 32 == 0 ? 32 : 16)                                   /* divides NS */
#endif


typedef struct {                                                                   /* one chunk of one block, (K, W) tiles */
    const float *tu, *tdl, *tsg, *tdy;
    float *tdu, *tdd;
} BwdTiles;

/* reverse pass over one chunk for state entries n0 .. n0 + NH - 1: g, dA, and dB_t lane-wise. The first part
   leaves g . B and sum_n g a h A in tdu, tdd, the middle ones add theirs; the last adds its own and finishes du,
   ddelta and the per-block sums. (dC_t = dy h_t, C . h_t and dz need no g: the recompute pass does them, where h_t is in a register.) */
static inline __attribute__((always_inline)) void bwd_part(
    const int n0, const int s0, const int64_t t0, const int64_t nt,
    const vf* Av, vf Dd, const float* Bb, const float* Cb, const int32_t* start_id, const int32_t* end_id,
    const float* dlast_b, float* dh0_b, int64_t seq_stride, const vf* H, const vf* Ab, BwdTiles T,
    vf* gst, vf* dAst, vf* dDst, vf* dbst, vf* aB)
{
    vf g[NH], dA[NH];
    for (int i = 0; i < NH; i++) { g[i] = gst[n0 + i]; dA[i] = dAst[n0 + i]; }
    vf dD = *dDst, db = *dbst;
    for (int64_t k = nt - 1; k >= 0; k--) {
        const int64_t t = t0 + k;
        if (dlast_b && end_id[t] >= 0)                                            /* dlast of the sequence ending at t */
            for (int i = 0; i < NH; i++) for (int j = 0; j < W; j++)
                g[i][j] += dlast_b[end_id[t] * seq_stride + j * NS + n0 + i];
        const vf x = vload(T.tu + k * W), dlv = vload(T.tdl + k * W), dy = vload(T.tdy + k * W), dlx = dlv * x;
        const int32_t sid = start_id[t];
        const vf* hp = H + k * SLAB + (n0 - s0);                                    /* h_{t-1} (h_{-1} at a start) */
        const vf* ak = Ab + k * SLAB + (n0 - s0);                                   /* H, Ab: entries s0 .. */
        vf* bk = aB + k * NS + n0;
        const float* Bt = Bb + t * NS + n0;
        const float* Ct = Cb + t * NS + n0;
        const vf* Ap = Av + n0;
        /* opaque to the compiler: the unrolled i loop then addresses base + constant; otherwise gcc keeps a
           pointer per (array, i) across the k loop and reloads them from the stack (45 reloads per 8 entries;
           backward 0.968x / 0.983x on 2 / 1 threads without them, interleaved A/B) */
        __asm__("" : "+r"(hp), "+r"(ak), "+r"(bk), "+r"(Bt), "+r"(Ct), "+r"(Ap));
        vf pdA = (vf){}, pb = (vf){};
        #pragma GCC unroll 8
        for (int i = 0; i < NH; i++) {
            const float Bn = Bt[i], Cn = Ct[i];
            const vf gn = g[i] + dy * Cn;                                           /* g_t */
            const vf ga = gn * ak[i];                                               /* g_{t-1} before a start */
            const vf gah = ga * hp[i];                                              /* g a h_{t-1} */
            pdA += gah * Ap[i];                                                     /* times ln 2 at the end */
            dA[i] += gah * dlv;
            pb += gn * Bn;
            bk[i] += gn * dlx;                                                      /* dB_t[n], lane-wise */
            g[i] = ga;
        }
        if (sid >= 0) {                                                             /* d h_{-1} = a_t g_t; nothing */
            if (dh0_b)                                                              /* flows across a start */
                for (int i = 0; i < NH; i++) for (int j = 0; j < W; j++) dh0_b[sid * seq_stride + j * NS + n0 + i] = g[i][j];
            for (int i = 0; i < NH; i++) g[i] = (vf){};
        }
        if (n0 == 0) {
            vstore(T.tdu + k * W, pb); vstore(T.tdd + k * W, pdA);
        } else if (n0 + NH < NS) {
            vstore(T.tdu + k * W, vload(T.tdu + k * W) + pb); vstore(T.tdd + k * W, vload(T.tdd + k * W) + pdA);
        } else {
            pb += vload(T.tdu + k * W);
            vstore(T.tdu + k * W, dy * Dd + dlv * pb);                             /* du */
            const vf dd = ((vload(T.tdd + k * W) + pdA) * 0.6931471805599453f + x * pb) * vload(T.tsg + k * W);
            vstore(T.tdd + k * W, dd);                                              /* ddelta = ddl d dl / d delta */
            db += dd;
            dD += dy * x;
        }
    }
    for (int i = 0; i < NH; i++) { gst[n0 + i] = g[i]; dAst[n0 + i] = dA[i]; }
    *dDst = dD; *dbst = db;
}

/* out[(g L + k) N + n] += sum over lanes of acc[(g K + k) N + n] for ng groups, nt steps; acc is left zeroed */
static inline void lane_sums(vf* acc, int64_t ng, int64_t K, int64_t nt, float* out, int64_t L) {
    for (int64_t g = 0; g < ng; g++)
        for (int64_t k = 0; k < nt; k++) {
            vf* a = acc + (g * K + k) * NS;
            for (int q = 0; q < NS; q += 16) vreduce_add(a + q, out + (g * L + k) * NS + q);
            for (int n = 0; n < NS; n++) a[n] = (vf){};
        }
}

#define GROUP_OF(blk, G) (((blk) / (dim / W)) * (G) + (((blk) % (dim / W)) * W) / (dim / (G)))

void ss_bwd_blk_f32(const float* u, const float* delta, const float* A, const float* Bg, const float* Cg,
                    const float* Dv, const float* z, const float* dbias, const float* h0,
                    const int32_t* start_id, const int32_t* end_id, const float* ckpt, const float* dout, const float* dlast,
                    float* du, float* ddelta, float* dA, float* dBt, float* dCt, float* dD, float* dz, float* dh0,
                    float* ddb_rows,
                    int64_t batch, int64_t dim, int64_t L, int64_t GB, int64_t GC, int64_t nseq,
                    int64_t K, int64_t softplus, int64_t nthreads, int64_t dsb, int64_t dsd, int64_t dsl)
{
    const int64_t nblk = batch * (dim / W), nck = (L + K - 1) / K;
    const int64_t nB = batch * GB * L * NS, nC = batch * GC * L * NS;
    #pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
        const int64_t tid = 0, nth = 1;
#endif
        const int64_t b0 = nblk * tid / nth, b1 = nblk * (tid + 1) / nth;         /* this thread's blocks */
        const int64_t SW = 2 * NS + 2;                                              /* per block: g, dA, dD, d bias */
        vf* st = (vf*)amalloc(sizeof(vf) * PB * SW);
        vf* H = (vf*)amalloc(sizeof(vf) * (K + 1) * SLAB);                         /* h_{t0-1}, h_t0, ... of the chunk, one slab (at a start h_{-1}) */
        vf* Ab = (vf*)amalloc(sizeof(vf) * K * SLAB);                              /* its decays */
        vf* accB = (vf*)amalloc(sizeof(vf) * PB * K * NS);                         /* (group, k, n), lane-wise */
        vf* accC = (vf*)amalloc(sizeof(vf) * PB * K * NS);
        float* tl = (float*)amalloc(sizeof(float) * K * W * 10);
        float* myB = (float*)calloc(nB > 0 ? nB : 1, sizeof(float));            /* (b, GB, L, N) */
        float* myC = (float*)calloc(nC > 0 ? nC : 1, sizeof(float));
        float *tu = tl, *tdl = tu + K * W, *tsg = tdl + K * W, *tdo = tsg + K * W, *tdy = tdo + K * W;
        float *tz = tdy + K * W, *tsz = tz + K * W, *tdu = tsz + K * W, *tdd = tdu + K * W, *tdz = tdd + K * W;
        const BwdTiles T = {tu, tdl, tsg, tdy, tdu, tdd};
        memset(accB, 0, sizeof(vf) * PB * K * NS);
        memset(accC, 0, sizeof(vf) * PB * K * NS);
        for (int64_t p0 = b0; p0 < b1; p0 += PB) {
            const int64_t p1 = p0 + PB < b1 ? p0 + PB : b1;
            const int64_t gB0 = GROUP_OF(p0, GB), gC0 = GROUP_OF(p0, GC);
            const int64_t nGB = GROUP_OF(p1 - 1, GB) + 1 - gB0, nGC = GROUP_OF(p1 - 1, GC) + 1 - gC0;
            memset(st, 0, sizeof(vf) * PB * SW);
            for (int64_t c = nck - 1; c >= 0; c--) {
                const int64_t t0 = c * K, nt = (t0 + K < L) ? K : L - t0;
                for (int64_t blk = p0; blk < p1; blk++) {
                    const int64_t b = blk / (dim / W), d0 = (blk % (dim / W)) * W, r0 = b * dim + d0;
                    const int64_t gb = GROUP_OF(blk, GB), gc = GROUP_OF(blk, GC);
                    const float* Bb = Bg + gb * NS * L;
                    const float* Cb = Cg + gc * NS * L;
                    vf* gst = st + (blk - p0) * SW;
                    vf Av[NS], Dd, Bias;
                    load_params(A, Dv, dbias, d0, Av, &Dd, &Bias);
                    tile_in(u + r0 * L, L, t0, nt, tu);
                    tile_in(delta + r0 * L, L, t0, nt, tdl);
                    const float* dorow = dout + b * dsb + d0 * dsd;                  /* dout (b, d0 + j, t) = dorow[j dsd + t dsl] */
                    tile_in_strided(dorow, dsd, dsl, t0, nt, tdo);
                    if (z) tile_in(z + r0 * L, L, t0, nt, tz);
                    for (int64_t k = 0; k < nt; k++) {                              /* pointwise parts, independent steps */
                        vf sg;
                        vstore(tdl + k * W, vdelta(vload(tdl + k * W) + Bias, softplus, &sg));
                        vstore(tsg + k * W, sg);
                        vf dy = vload(tdo + k * W);                                  /* dy = dout silu(z) */
                        if (z) {
                            vf s;
                            dy *= vgate(vload(tz + k * W), &s);
                            vstore(tsz + k * W, s);
                        }
                        vstore(tdy + k * W, dy);
                    }
                    vf* aB = accB + (gb - gB0) * K * NS;
                    const float* dl_b = dlast ? dlast + (b * nseq * dim + d0) * NS : 0;   /* (b * nseq, dim, NS) */
                    const float* h0_b = h0 ? h0 + (b * nseq * dim + d0) * NS : 0;         /* dh0 (zeroed) alike */
                    float* dh0_b = dh0 ? dh0 + (b * nseq * dim + d0) * NS : 0;
                    vf *dAst = gst + NS, *dDst = dAst + NS, *dbst = dDst + 1;
                    for (int s0 = 0; s0 < NS; s0 += SLAB) {                         /* state entries s0 .. s0 + SLAB - 1 */
                      for (int q = 0; q < SLAB; q += 16) rows_in(ckpt + (r0 * nck + c) * NS + s0 + q, nck * NS, H + q);
                      for (int64_t k = 0; k < nt; k++) {                            /* recompute the chunk's states */
                        const int64_t t = t0 + k;
                        if (s0 == 0 && c > 0 && (k & 48) < K) {                      /* the previous chunk's rows */
                            PREFETCH_ROWS(u + r0 * L, L, t0 - K, k, 0); PREFETCH_ROWS(delta + r0 * L, L, t0 - K, k, 0);
                            if (dsl == 1) PREFETCH_ROWS(dorow, dsd, t0 - K, k, 0);
                            else if (dsd == 1) __builtin_prefetch(dorow + (t0 - K + k) * dsl, 0);  /* channel-last: a line per step */
                            if (z) PREFETCH_ROWS(z + r0 * L, L, t0 - K, k, 0);      /* du, ddelta, dz: streamed out */
                        }
                        const vf dlv = vload(tdl + k * W), dlx = dlv * vload(tu + k * W), dy = vload(tdy + k * W);
                        vf* hp = H + k * SLAB;                                       /* h_{t-1} */
                        if (start_id[t] >= 0) {         /* h_{-1} at a start, in place of the last sequence's state */
                            if (h0_b)                   /* (which nothing reads again), so the reverse pass reads it too */
                                for (int q = 0; q < SLAB; q += 16) rows_in(h0_b + start_id[t] * dim * NS + s0 + q, NS, hp + q);
                            else
                                for (int n = 0; n < SLAB; n++) hp[n] = (vf){};
                        }
                        vf* hk = H + (k + 1) * SLAB;                                 /* entry n at [n - s0] */
                        vf* ak = Ab + k * SLAB;
                        vf* ck = accC + ((gc - gC0) * K + k) * NS;
                        vf p0 = s0 == 0 ? Dd * vload(tu + k * W) : (z ? vload(tdz + k * W) : (vf){}), p1 = (vf){};
                        for (int n = s0; n < s0 + SLAB; n += 2) {
                            const vf a0 = vexp2(dlv * Av[n]), a1 = vexp2(dlv * Av[n + 1]);
                            ak[n - s0] = a0; ak[n - s0 + 1] = a1;
                            const vf h0 = a0 * hp[n - s0] + dlx * Bb[t * NS + n], h1 = a1 * hp[n - s0 + 1] + dlx * Bb[t * NS + n + 1];
                            hk[n - s0] = h0; hk[n - s0 + 1] = h1;
                            ck[n] += dy * h0; ck[n + 1] += dy * h1;                  /* dC_t[n], lane-wise */
                            p0 += Cb[t * NS + n] * h0; p1 += Cb[t * NS + n + 1] * h1;
                        }
                        if (z && s0 + SLAB < NS) vstore(tdz + k * W, p0 + p1);      /* ypre so far */
                        else if (z) {                                                /* dz = dout ypre silu'(z), ypre = C . h + D u */
                            const vf s = vload(tsz + k * W), zz = vload(tz + k * W);
                            vstore(tdz + k * W, vload(tdo + k * W) * (p0 + p1) * s * (1.0f + zz * (1.0f - s)));
                        }
                      }
                      for (int n0 = s0; n0 < s0 + SLAB; n0 += NH)
                        bwd_part(n0, s0, t0, nt, Av, Dd, Bb, Cb, start_id, end_id, dl_b, dh0_b, dim * NS, H, Ab, T, gst,
                                 dAst, dDst, dbst, aB);
                    }
                    tile_out(tdu, L, t0, nt, du + r0 * L, 1);
                    tile_out(tdd, L, t0, nt, ddelta + r0 * L, 1);
                    if (z) tile_out(tdz, L, t0, nt, dz + r0 * L, 1);
                }
                lane_sums(accB, nGB, K, nt, myB + (gB0 * L + t0) * NS, L);            /* once per group and step */
                lane_sums(accC, nGC, K, nt, myC + (gC0 * L + t0) * NS, L);
            }
            for (int64_t blk = p0; blk < p1; blk++) {
                const int64_t r0 = (blk / (dim / W)) * dim + (blk % (dim / W)) * W;
                const vf* gst = st + (blk - p0) * SW;
                rows_out_ns(gst + NS, NS, dA + r0 * NS, 0);
                for (int j = 0; j < W; j++) {
                    dD[r0 + j] = gst[2 * NS][j];
                    if (ddb_rows) ddb_rows[r0 + j] = gst[2 * NS + 1][j];
                }
            }
        }
        #pragma omp critical
        {
            for (int64_t i = 0; i < nB; i++) dBt[i] += myB[i];
            for (int64_t i = 0; i < nC; i++) dCt[i] += myC[i];
        }
#if defined(__AVX512F__)
        _mm_sfence();                                                               /* the streamed stores are visible */
#endif
        afree(st); afree(H); afree(Ab); afree(accB); afree(accC); afree(tl); free(myB); free(myC);
    }
}
"""

_FWD_ARGS = [PTR] * 14 + [I64] * 9
_BWD_ARGS = [PTR] * 23 + [I64] * 12

_FUNCTIONS = {"ss_fwd_blk_f32": _FWD_ARGS, "ss_bwd_blk_f32": _BWD_ARGS, "ss_exp_blk_f32": [PTR, PTR, I64, I64]}
_LIBS: dict[int, CKernel] = {}


def blk_lib(ns: int) -> CKernel:
    """The kernels for state size ``ns`` (a multiple of 16, at most MAX_NS), compiled on first use."""
    if ns % WIDTH or not 0 < ns <= MAX_NS:
        raise ValueError(f"blk_lib: state size {ns} is not a multiple of {WIDTH} in [{WIDTH}, {MAX_NS}]")
    if ns not in _LIBS:
        name = "selective_scan_blk" if ns == 16 else f"selective_scan_blk{ns}"
        _LIBS[ns] = CKernel(name, f"#define NS {ns}\n" + _SOURCE, _FUNCTIONS)
    return _LIBS[ns]


BLK_LIB = blk_lib(16)
