"""Small Triton helpers shared by the kernels of several ops (import only where triton is available)."""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["to_acc"]


@triton.jit
def to_acc(v, IS_F64: tl.constexpr):
    """Cast to the accumulation dtype: float32, or float64 when the op runs in float64."""
    if IS_F64:
        out = v.to(tl.float64)
    else:
        out = v.to(tl.float32)
    return out
