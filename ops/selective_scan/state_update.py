"""One decode step of the selective scan (mamba_ssm's ``selective_state_update``), functional core.

    dl = [softplus](dt + dt_bias);  h' = exp(dl A) * h + dl * B * x;  y = (C . h' + D x) [* silu(z)]

state (batch, dim, N); x, dt, z (batch, dim); B, C (batch, N) or (batch, G, N).
A single step is a handful of elementwise ops over (batch, dim, N), memory bound and already
vectorised: on CPU the reference's step (plain torch, differentiable by autograd) is the fast
path; with backend="triton" (CUDA) the kernel of ``triton_update.py`` fuses it into one pass,
unless gradients are needed, which the torch step provides.
"""
from __future__ import annotations

import torch

from .reference import selective_state_update_reference

__all__ = ["state_update_step"]


def state_update_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    """-> (y (batch, dim) in x's dtype, new_state (batch, dim, N)); ``state`` is not mutated here."""
    tensors = (state, x, dt, A, B, C, D, z, dt_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if backend == "triton" and not needs_grad:  # the kernel is forward-only; autograd uses the torch step
        from .triton_update import triton_state_update
        return triton_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return selective_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
