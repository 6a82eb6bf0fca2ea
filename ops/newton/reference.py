"""Reference: the recurrence applied one step at a time (the ground truth for the Newton solver).

    h_{-1} = h0,   h_t = f(h_{t-1}, x_t),   t = 0 .. T-1

x (B, T, *X), h0 (B, *S) -> h (B, T, *S). Differentiable by ordinary autograd through the loop
(backpropagation through time), which is what the implicit adjoint of ``newton_solve`` must
reproduce. Also the exact fallback when Newton does not converge.
"""
from __future__ import annotations

import torch

from .jacobian import check_output

__all__ = ["sequential_solve"]


def sequential_solve(f, x: torch.Tensor, h0: torch.Tensor, op: str = "newton_solve") -> torch.Tensor:
    """h (B, T, *S) with h_t = f(h_{t-1}, x_t), h_{-1} = h0 (B, *S); x (B, T, *X)."""
    h = h0
    out = []
    for t, x_t in enumerate(x.unbind(1)):  # unbind: one backward node, not T full-size zero grads
        h_new = f(x_t, h)
        if t == 0:
            check_output(h_new, h, op)
        h = h_new
        out.append(h)
    return torch.stack(out, dim=1)
