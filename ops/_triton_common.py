"""Small Triton helpers shared by the kernels of several ops (import only where triton is available)."""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["to_acc", "combine_affine"]


@triton.jit
def to_acc(v, IS_F64: tl.constexpr):
    """Cast to the accumulation dtype: float32, or float64 when the op runs in float64."""
    if IS_F64:
        out = v.to(tl.float64)
    else:
        out = v.to(tl.float32)
    return out


@triton.jit
def combine_affine(a1, b1, a2, b2):
    """Associative combine of affine maps for h_t = a_t h_{t-1} + b_t scans: (a1, b1) earlier,
    (a2, b2) later compose to h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2
