"""Test utilities shared by every op and mixer test: dtype-aware comparison against references.

Tolerances are stated per dtype, once, here. A kernel that needs looser numbers than these has a
bug to find, not a tolerance to raise.
"""
from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "assert_close", "rel_rms_error"]

# (rtol, atol) for comparing a fast path with a float64/float32 reference computed on the same
# inputs. float32 matches mamba_ssm's tests of its kernels vs the sequential reference.
TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (6e-4, 2e-3),
    torch.bfloat16: (3e-2, 5e-2),
    torch.float16: (1e-2, 1e-2),
}


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||a - e||_2 / ||e||_2 in float64 (fla's test metric)."""
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 rtol: float | None = None, atol: float | None = None, name: str = "tensor") -> None:
    """torch.testing.assert_close with parazoo's per-dtype tolerances.

    dtype: the precision the fast path computed in (defaults to actual.dtype); expected is cast
    to actual's dtype-free float64 for the comparison, so a low-precision result is compared with
    the exact one. NaN anywhere fails.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    dtype = dtype or actual.dtype
    r, a = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    rtol = r if rtol is None else rtol
    atol = a if atol is None else atol
    if torch.isnan(actual).any() and not torch.isnan(expected).any():
        raise AssertionError(f"{name}: result has NaN where the reference has none")
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{name} ({dtype}): {m}")
