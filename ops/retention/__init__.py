"""Retention (RetNet, Sun et al. 2023): chunk_retention, parallel_retention, fused_recurrent_retention.

Per head h = 0..H-1 a fixed decay gamma_h = 1 - 2^(-5-h) (not learned, as fla). With q scaled by
``scale`` (default K^-1/2):

    recurrent:  S_t = gamma S_{t-1} + k_t^T v_t,   o_t = q_t S_t
    parallel:   O = (Q K^T * D) V,                 D_nm = gamma^(n-m) if n >= m else 0
    chunkwise:  R_i = K_[i]^T (V_[i] * gamma^(B-1-j)) + gamma^B R_{i-1}
                O_[i] = (Q_[i] K_[i]^T * D) V_[i] + (Q_[i] * gamma^(j+1)) R_{i-1}

All three compute the same function (the paper's printed Eq. 7 has an error; the chunkwise form
above is the one that matches, see ANCHORS.md). Layouts follow fla: q, k (B, T, H, K),
v (B, T, H, V), states (B, H, K, V). Outputs keep v's dtype; states and accumulation are float32
(float64 for float64 inputs); the final state is returned in that accumulation dtype.

Return values, as fla: chunk_retention and fused_recurrent_retention return (o, final_state), with
final_state None unless output_final_state. parallel_retention returns (o, None): fla returns
(o, attn) with attn only when asked for attention scores, which parazoo's contract does not offer.

Backends: "cpu" runs the torch chunkwise form (chunk, and parallel as one chunk of length T:
O(T^2) memory, as the parallel form is) or the recurrent loop (fused C via ops/_cpu_jit on CPU
tensors, torch loops without a compiler or on CUDA); "triton" runs the Triton kernels
(parallel_retention's Triton path is the chunked kernels with chunk 64, which compute the same O;
float32 dots use 3xTF32, float64/16-bit ones are exact products with float32 accumulation);
"reference" the sequential definition. chunk_size only chooses how the work is tiled: any power of
two gives the same result (the Triton kernels tile at least 16 steps, the tl.dot minimum).
"""
from __future__ import annotations

import math

import torch

from .._backend import resolve_backend
from .._validate import check_power_of_two, check_same_device, check_tensor
from ._op import retention_op
from .common import default_scale
from .reference import retention_reference

__all__ = ["chunk_retention", "parallel_retention", "fused_recurrent_retention", "retention_reference"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(op, q, k, v, scale, initial_state=None, chunk_size=None):
    """Validate the arguments (ValueError naming the argument, expected and actual); returns the scale."""
    dims = {}
    check_tensor("q", q, op=op, shape=("B", "T", "H", "K"), dtypes=_DTYPES, dims=dims)
    check_tensor("k", k, op=op, shape=("B", "T", "H", "K"), dtypes=(q.dtype,), dims=dims)
    check_tensor("v", v, op=op, shape=("B", "T", "H", None), dtypes=(q.dtype,), dims=dims)
    dims["V"] = v.shape[-1]
    check_tensor("initial_state", initial_state, op=op, shape=("B", "H", "K", "V"), dtypes=_DTYPES,
                 optional=True, dims=dims)
    check_same_device(op, q=q, k=k, v=v, initial_state=initial_state)
    for name in ("T", "K", "V"):
        if dims[name] < 1:
            raise ValueError(f"{op}: size {name} of the inputs must be at least 1, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    if chunk_size is not None:
        check_power_of_two("chunk_size", chunk_size, op=op)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)):
        raise ValueError(f"{op}: argument 'scale' must be a finite float or None, got {scale!r}")
    return default_scale(q.shape[-1], scale)


def chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, chunk_size=64, backend="auto"):
    """Chunkwise retention. q, k (B, T, H, K); v (B, T, H, V); initial_state (B, H, K, V) or None.

    Returns (o (B, T, H, V), final_state (B, H, K, V) or None)."""
    op = "chunk_retention"
    s = _check(op, q, k, v, scale, initial_state, chunk_size)
    backend = resolve_backend(backend, q, k, v, initial_state, op=op)
    if backend == "reference":
        return retention_reference(q, k, v, s, initial_state, output_final_state)
    return retention_op(q, k, v, initial_state, s, chunk_size, "chunk", backend, output_final_state)


def parallel_retention(q, k, v, scale=None, backend="auto"):
    """Parallel retention O = (Q K^T * D) V. q, k (B, T, H, K); v (B, T, H, V). Returns (o, None)."""
    op = "parallel_retention"
    s = _check(op, q, k, v, scale)
    backend = resolve_backend(backend, q, k, v, op=op)
    if backend == "reference":
        return retention_reference(q, k, v, s)[0], None
    return retention_op(q, k, v, None, s, 64, "parallel", backend, False)[0], None


def fused_recurrent_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, backend="auto"):
    """Recurrent retention, one step at a time (decoding). Shapes as chunk_retention.

    Returns (o (B, T, H, V), final_state (B, H, K, V) or None)."""
    op = "fused_recurrent_retention"
    s = _check(op, q, k, v, scale, initial_state)
    backend = resolve_backend(backend, q, k, v, initial_state, op=op)
    if backend == "reference":
        return retention_reference(q, k, v, s, initial_state, output_final_state)
    return retention_op(q, k, v, initial_state, s, 0, "recurrent", backend, output_final_state)
