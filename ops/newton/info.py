"""Options of the Newton solver and the convergence report it returns.

Convergence test (checked every ``check_every`` iterations; each check is one host sync on GPU):

    max_t,i |F_t(h)_i| <= atol + rtol * |h_t,i|   for every element,  F_t(h) = h_t - f(h_{t-1}, x_t)
"""
from __future__ import annotations

import dataclasses

import torch

__all__ = ["NewtonOptions", "NewtonInfo", "NewtonError", "default_tolerances", "ON_FAIL", "INITS"]

ON_FAIL = ("sequential", "raise", "warn")
INITS = ("f0", "zeros", "picard")


class NewtonError(RuntimeError):
    """Newton did not converge (on_fail='raise'), or produced NaN/inf that no fallback can fix."""


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) on the residual: well above the rounding floor of evaluating f, far below
    the test tolerances on h (Newton converges quadratically, so the next step is much tighter)."""
    if dtype == torch.float64:
        return 1e-12, 1e-12
    return 1e-5, 1e-5


@dataclasses.dataclass
class NewtonOptions:
    init: str = "f0"            # "f0": h_t = f(h0, x_t) | "zeros" | "picard": f0 + picard_sweeps Picard sweeps
    picard_sweeps: int = 2
    omega: float = 1.0          # damping: h <- h + omega * delta
    max_iters: int = 20
    atol: float | None = None   # None: default_tolerances(dtype)
    rtol: float | None = None
    check_every: int = 1
    on_fail: str = "sequential"
    chunk_size: int | None = None  # Newton inside chunks of this many steps, state carried across
    backend: str = "auto"       # backend of the scans (linear_scan / block_scan)


@dataclasses.dataclass
class NewtonInfo:
    """What the last solve did. ``iterations``: Newton steps per chunk; ``residual``: the final
    residual max-norm (over all chunks); ``fell_back``: chunks solved sequentially instead."""

    iterations: list = dataclasses.field(default_factory=list)
    residual: float = 0.0
    converged: bool = True
    fell_back: int = 0
    chunks: int = 0

    @property
    def max_iterations(self) -> int:
        return max(self.iterations, default=0)

    def add(self, iters: int, residual: float, converged: bool, fell_back: bool) -> None:
        self.iterations.append(iters)
        self.residual = residual if residual != residual else max(self.residual, residual)  # NaN sticks
        self.converged = self.converged and converged
        self.fell_back += int(fell_back)
        self.chunks += 1
