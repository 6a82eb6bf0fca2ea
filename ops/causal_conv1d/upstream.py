"""Delegation to the ``causal_conv1d`` CUDA package (optional extra ``parazoo[cuda]``).

When it is installed and the tensors are on CUDA, backend auto/triton calls it, passing the
arguments positionally in upstream's order:
    causal_conv1d_fn(x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out, activation)
    causal_conv1d_update(x, conv_state, weight, bias, activation)
Cases upstream does not cover (float64, width outside 2..4, packed cu_seqlens, initial_states
on a time-contiguous x, a conv_state of another dtype; seq_idx with states or on a time-contiguous
x) stay on parazoo's Triton kernels.
"""
from __future__ import annotations

import torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def module():
    """The imported ``causal_conv1d`` package, or None."""
    try:
        import causal_conv1d
    except Exception:
        return None
    return causal_conv1d if hasattr(causal_conv1d, "causal_conv1d_fn") else None


def on_cuda(x: torch.Tensor) -> bool:
    return x.is_cuda


def fn_for(x, weight, initial_states, cu_seqlens):
    """upstream's causal_conv1d_fn when it can run this call, else None."""
    if not on_cuda(x) or x.dtype not in _DTYPES or not 2 <= weight.shape[1] <= 4 or cu_seqlens is not None:
        return None
    if initial_states is not None and x.stride(1) != 1:  # upstream needs channel-last x for states
        return None
    mod = module()
    return mod.causal_conv1d_fn if mod is not None else None


def fn_for_seq_idx(x, weight, initial_states, return_final_states):
    """upstream's causal_conv1d_fn when it can run this seq_idx call (channel-last x, no states), else None."""
    if initial_states is not None or return_final_states or x.stride(1) != 1:
        return None
    return fn_for(x, weight, None, None)


def update_for(x, conv_state, weight):
    """upstream's causal_conv1d_update when it can run this call, else None."""
    if (not on_cuda(x) or x.dtype not in _DTYPES or conv_state.dtype != x.dtype
            or not 2 <= weight.shape[1] <= 4):
        return None
    mod = module()
    return getattr(mod, "causal_conv1d_update", None) if mod is not None else None


def call_fn(fn, x, weight, bias, activation, initial_states, return_final_states, seq_idx=None):
    if seq_idx is not None:
        seq_idx = seq_idx.to(torch.int32).contiguous()
    return fn(x, weight, bias, seq_idx, initial_states, return_final_states, None, activation)


def call_update(fn, x, conv_state, weight, bias, activation):
    return fn(x, conv_state, weight, bias, activation)
