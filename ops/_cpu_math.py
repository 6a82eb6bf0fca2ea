"""C source of the elementwise math shared by the fused CPU kernels (``_cpu_jit``).

``cpu_exp_f32``: a branch-free float32 exp that the compiler vectorises inside ``#pragma omp simd``
loops (libm's ``expf`` is a call and is not): Cody-Waite reduction x = k ln2 + r with k rounded
by the 1.5 * 2^23 trick, e^r by a degree-7 Taylor polynomial, 2^k built in the exponent bits;
~1 ulp, inputs clamped to [-87, 88] (so exp(-inf) is 1.6e-38 and exp(+inf) is 1.65e38, not 0 and
inf). float64 kernels use libm's ``exp``.

gcc (no -ffast-math) if-converts the clamps rather than using min / max; in x / (1 + exp(-x)) that
computes the division once per clamp case (three vdivps per vector). Clamping by a bitwise select
instead removes that (silu loops 5-15% faster) but stops gcc from vectorising loops whose body holds
a conditional: selective_scan's per-channel kernels got 1.56x slower and the ssd output loop 1.47x
(interleaved A/Bs, 2026-11-22), so the ternaries stay.
"""
from __future__ import annotations

__all__ = ["EXP_F32_SOURCE"]

EXP_F32_SOURCE = r"""
static inline float cpu_exp_f32(float x) {
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
