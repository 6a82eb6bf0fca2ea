"""linear_scan: the diagonal linear recurrence, parallel over time.

    h_t = a_t * h_{t-1} + b_t,   t = 0 .. T-1,   h_{-1} = h0 (zeros when None)
    reverse=True:  h_t = a_t * h_{t+1} + b_t,  t = T-1 .. 0,  h_T = h0

a, b: (B, T, *) (any trailing channel dims, e.g. (B, T, H, D)); h0: (B, *). Returns h: (B, T, *) in
dtype promote(a, b); the state is float32 (float64 when an input is float64). Gradients flow to
a, b and h0. This is the scan under Mamba-style SSMs, gated linear RNNs and each Newton step of
ParaRNN's diagonal cells (ParaGRU), whose adjoint is ``reverse=True``.

Packed sequences: ``cu_seqlens`` (flash-attn convention, batch 1, int tensor [0, l1, l1+l2, ..., T])
restarts the state at every sequence start; each sequence starts from zero, or from its own row of
``h0`` given as (n_seqs, *) (one initial state per packed sequence).

Backends (``backend=`` or PARAZOO_BACKEND): "reference" (sequential loop, ``reference.py``), "cpu"
(fused C loop via ops/_cpu_jit, pure-torch chunked fallback, ``cpu.py``), "triton" (tiled
tl.associative_scan kernels, ``triton_scan.py``); "auto" = Triton for CUDA tensors, else cpu.
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._validate import check_cu_seqlens, check_same_device, check_tensor
from .scan_op import make_scan_op
from .reference import linear_scan_ref
from .varlen import fold_cu_seqlens

__all__ = ["linear_scan", "linear_scan_ref"]

_OP = "linear_scan"
linear_scan_op = make_scan_op(_OP, {"cpu": ".linear_scan.cpu", "triton": ".linear_scan.triton_scan"}, state_tail=0)


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, reverse: bool = False,
                cu_seqlens: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t over dim 1 of a, b: (B, T, *); h0: (B, *) (or (n_seqs, *) with
    cu_seqlens). Returns h: (B, T, *)."""
    check_tensor("a", a, op=_OP)
    if a.dim() < 2:
        raise ValueError(f"{_OP}: argument 'a' must have shape (B, T, *), got {tuple(a.shape)}")
    check_tensor("b", b, op=_OP, shape=tuple(a.shape))
    n_rows = a.shape[0]
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, a.shape[1], a.shape[0], op=_OP)
        n_rows = cu_seqlens.numel() - 1
    check_tensor("h0", h0, op=_OP, optional=True, shape=(n_rows, *a.shape[2:]))
    check_same_device(_OP, a=a, b=b, h0=h0)
    if not isinstance(reverse, bool):
        raise ValueError(f"{_OP}: argument 'reverse' must be a bool, got {type(reverse).__name__}")
    backend = resolve_backend(backend, a, b, h0, op=_OP)
    if cu_seqlens is not None:
        a, b = fold_cu_seqlens(a, b, h0, cu_seqlens, reverse)
        h0 = None
    if backend == "reference":
        return linear_scan_ref(a, b, h0, reverse)
    return linear_scan_op(a, b, h0, reverse, backend)
