"""Linear maps into and out of the time-major layout the scan ops take, (B, C, T).

    time_major_linear:       (B, T, in) -> (B, out, T)    y[b] = W x[b]^T
                             dx[b] = dy[b]^T W,   dW = sum_b dy[b] x[b]
    linear_from_time_major:  (B, in, T) -> (B, T, out)    y[b] = x[b]^T W^T
                             dx[b] = (dy[b] W)^T, dW = sum_b dy[b]^T x[b]^T

``torch.matmul(W, x.transpose(1, 2))`` and ``F.linear(x.transpose(1, 2), W)`` compute the same, but
fold the batch through transposed views and copy whole activations or gradients into another
layout first. In a Mamba-1 layer at T 2048 (d_inner 1536, 2 CPU threads) the two copies in the
backward of matmul (in_proj, dt_proj) took 79 ms of a 475 ms training step; at batch 3, T 1024 the
forward copies of x_proj's and out_proj's inputs took another 58 ms. Here every product is one 2-D
GEMM per batch row whose operands the BLAS reads transposed in place: no transposing copies (with
batch > 1, stacking the rows' results is one plain copy of the output).

Autocast: the forward's GEMMs run under the caller's autocast like any matmul (so y comes out in
the autocast dtype); the backward computes in the gradient's dtype, and autograd hands each
gradient back in its input's dtype, as with autocast's own casts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["time_major_linear", "linear_from_time_major"]


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    return rows[0][None] if len(rows) == 1 else torch.stack(rows)             # batch 1: a view, no copy


class _RowwiseLinear(torch.autograd.Function):
    """One 2-D GEMM per batch row. tm_in: x (B, in, T) -> y (B, T, out); else x (B, T, in) -> y (B, out, T)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, tm_in: bool) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.tm_in = tm_in
        if tm_in:
            return _stack([x[b].t() @ weight.t() for b in range(x.shape[0])])  # (B, T, out)
        return _stack([weight @ x[b].t() for b in range(x.shape[0])])         # (B, out, T)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        tm_in, n = ctx.tm_in, dy.shape[0]
        g = [dy[b].t() if tm_in else dy[b] for b in range(n)]                 # (out, T) each
        dx = dw = None
        if ctx.needs_input_grad[0]:
            w = weight.to(dy.dtype)
            dx = _stack([gb.t() @ w for gb in g])                               # (B, T, in)
            if tm_in:
                dx = dx.transpose(1, 2)                                         # (B, in, T), channel-last like F.linear's
        if ctx.needs_input_grad[1]:
            xc = x.to(dy.dtype)
            cols = [xc[b] if tm_in else xc[b].t() for b in range(n)]           # (in, T) each
            dw = g[0] @ cols[0].t()                                             # (out, in)
            for gb, cb in zip(g[1:], cols[1:]):
                dw.addmm_(gb, cb.t())
        return dx, dw, None                             # the autograd engine casts each to its input's dtype


def _check(name: str, x: torch.Tensor, weight: torch.Tensor, in_dim: int) -> None:
    if x.dim() != 3 or weight.dim() != 2 or x.shape[in_dim] != weight.shape[1]:
        want = "(B, T, in)" if in_dim == 2 else "(B, in, T)"
        raise ValueError(f"{name}: expected x {want} and weight (out, in) with matching 'in', got x "
                         f"{tuple(x.shape)} and weight {tuple(weight.shape)}")


def time_major_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (B, T, in), weight (out, in) -> (B, out, T), time-contiguous; equals
    ``torch.matmul(weight, x.transpose(1, 2))``. Any strides of x (a slice of a wider tensor)."""
    _check("time_major_linear", x, weight, 2)
    if x.shape[0] == 0:
        return torch.matmul(weight, x.transpose(1, 2))
    return _RowwiseLinear.apply(x, weight, False)


def linear_from_time_major(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, in, T), weight (out, in), bias (out,) or None -> (B, T, out), contiguous; equals
    ``F.linear(x.transpose(1, 2), weight, bias)``. Any strides of x."""
    _check("linear_from_time_major", x, weight, 1)
    y = F.linear(x.transpose(1, 2), weight) if x.shape[0] == 0 else _RowwiseLinear.apply(x, weight, True)
    return y if bias is None else y + bias
