"""Pieces shared by the retention Triton kernels: tile loads in the (B, T, H, D) layout, tile sizes.

Inputs are contiguous (B, T, H, D): element (b, t, h, d) sits at ((b T + t) H + h) D + d, so for
one (b, h) the rows t are H*D apart. States are (B*H, ..., K, V) row-major in the accumulation
dtype (float32, float64 for float64 inputs).
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["load_rows", "load_rows_t", "tile"]


@triton.jit
def load_rows(base, t0, T, row_stride, c0, n_cols, BT: tl.constexpr, BC: tl.constexpr):
    """Tile (BT, BC) of rows t0.. and columns c0.. of a (T, n_cols) view; zeros outside."""
    rows = t0 + tl.arange(0, BT)
    cols = c0 + tl.arange(0, BC)
    mask = (rows[:, None] < T) & (cols[None, :] < n_cols)
    return tl.load(base + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def load_rows_t(base, t0, T, row_stride, c0, n_cols, BT: tl.constexpr, BC: tl.constexpr):
    """The transposed tile (BC, BT) of the same view; zeros outside."""
    rows = t0 + tl.arange(0, BT)
    cols = c0 + tl.arange(0, BC)
    mask = (cols[:, None] < n_cols) & (rows[None, :] < T)
    return tl.load(base + rows[None, :] * row_stride + cols[:, None], mask=mask, other=0.0)


def tile(n: int, cap: int = 64) -> int:
    """A tile size for a dimension of size n: a power of two in [16, cap] (tl.dot needs >= 16)."""
    return max(16, min(cap, triton.next_power_of_2(n)))

