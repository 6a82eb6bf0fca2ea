"""block_scan: the block-diagonal linear recurrence (K x K blocks per channel), parallel over time.

    h_t = A_t @ h_{t-1} + b_t,   t = 0 .. T-1,   h_{-1} = h0 (zeros when None)
    reverse=True:  h_t = A_t @ h_{t+1} + b_t,  t = T-1 .. 0,  h_T = h0

A: (B, T, *, K, K); b: (B, T, *, K); h0: (B, *, K). Returns h: (B, T, *, K) in dtype promote(A, b);
state float32 (float64 when an input is float64). Any K works (K = 1..4 have unrolled fast paths).
Gradients flow to A, b and h0. This is the linear system of one ParaRNN Newton step for cells with
K x K Jacobian blocks per channel (ParaLSTM: K = 2, state [c, h]):
    delta_t = A_t delta_{t-1} + r_t,  A_t = df/dh_{t-1};  the adjoint
    lambda_t = g_t + A_{t+1}^T lambda_{t+1}  is block_scan(A shifted and transposed, g, reverse=True).

Backends (``backend=`` or PARAZOO_BACKEND): "reference" (sequential loop), "cpu" (fused C loop via
ops/_cpu_jit, pure-torch chunked fallback), "triton" (Triton kernels); "auto" = Triton for CUDA
tensors, else cpu.
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._validate import check_same_device, check_tensor
from ..linear_scan.scan_op import make_scan_op
from .reference import block_scan_ref

__all__ = ["block_scan", "block_scan_ref"]

_OP = "block_scan"
block_scan_op = make_scan_op(_OP, {"cpu": ".block_scan.cpu", "triton": ".block_scan.triton_scan"}, state_tail=1)


def block_scan(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, reverse: bool = False,
               backend: str = "auto") -> torch.Tensor:
    """h_t = A_t @ h_{t-1} + b_t over dim 1; A: (B, T, *, K, K), b: (B, T, *, K), h0: (B, *, K).
    Returns h: (B, T, *, K)."""
    check_tensor("b", b, op=_OP)
    if b.dim() < 3:
        raise ValueError(f"{_OP}: argument 'b' must have shape (B, T, *, K), got {tuple(b.shape)}")
    K = b.shape[-1]
    check_tensor("A", A, op=_OP, shape=(*b.shape, K))
    check_tensor("h0", h0, op=_OP, optional=True, shape=(b.shape[0], *b.shape[2:]))
    check_same_device(_OP, A=A, b=b, h0=h0)
    if not isinstance(reverse, bool):
        raise ValueError(f"{_OP}: argument 'reverse' must be a bool, got {type(reverse).__name__}")
    backend = resolve_backend(backend, A, b, h0, op=_OP)
    if backend == "reference":
        return block_scan_ref(A, b, h0, reverse)
    return block_scan_op(A, b, h0, reverse, backend)
