"""One decode step of the selective scan (mamba_ssm's ``selective_state_update``), functional core.

    dl = [softplus](dt + dt_bias);  h' = exp(dl A) * h + dl * B * x;  y = (C . h' + D x) [* silu(z)]

state (batch, dim, N); x, dt, z (batch, dim); B, C (batch, N) or (batch, G, N).
Without gradients the step is one fused pass that updates the state in place: on CPU the C loop of
``cpu_update.py`` (the mamba2 mixer's decode step at d_model 768, H 24, P 64, N 128: 5.74 -> 3.92 ms per
token on one thread, README), with backend="triton" (CUDA) the kernel of ``triton_update.py``.
With gradients, or where those do not apply, the reference's step (plain torch, differentiable by
autograd) runs.
"""
from __future__ import annotations

import torch

from . import cpu_update
from .reference import _compute_dtype, selective_state_update_reference

__all__ = ["state_update_step"]


def state_update_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    """-> (y (batch, dim) in x's dtype, new_state (batch, dim, N)). The CPU fused loop writes the new state
    into ``state`` and returns it as new_state; the other paths leave ``state`` alone."""
    tensors = (state, x, dt, A, B, C, D, z, dt_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if backend == "triton" and not needs_grad:  # the kernel is forward-only; autograd uses the torch step
        from .triton_update import triton_state_update
        return triton_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if backend == "cpu" and not needs_grad:
        y = cpu_update.step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, _compute_dtype(*tensors))
        if y is not None:
            return y.to(x.dtype), state
    return selective_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
