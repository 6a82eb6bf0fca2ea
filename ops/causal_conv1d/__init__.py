"""Public ``causal_conv1d`` and ``causal_conv1d_update`` (causal_conv1d_fn's layout and semantics).

    y[b, d, t] = act(bias[d] + sum_{k=0}^{width-1} weight[d, k] * x[b, d, t - (width-1) + k])

x: (batch, dim, L); weight: (dim, width); bias: (dim,); act: None | "silu" | "swish" (= silu);
x at negative t comes from initial_states (batch, dim, width-1), else 0; final_states
(batch, dim, width-1) = the last width-1 inputs, left-padded with initial_states/zeros.
cu_seqlens (flash-attn convention, batch 1) packs sequences: each sees zeros (or its own
initial_states[i]) before its start; states are then (n_seqs, dim, width-1).
seq_idx (batch, L) int, keyword only (causal_conv1d_fn's packing, any batch size): the window
restarts wherever seq_idx changes along a row (``ops/_seq_idx.py``). Beyond upstream, which refuses
states with seq_idx: initial_states (batch, dim, width-1) precede a row's tokens of sequence 0, and
final_states are each row's last sequence's.

causal_conv1d_update: conv_state is (batch, dim, S) with any S >= width-1 (upstream keeps
S = width; width-1 also works). Only its last width-1 columns are read; after the call it holds
the last S inputs (rolled left by the number of new inputs, which go at the end), so it equals
the matching steps of causal_conv1d. It is a decode/inference op: conv_state is a buffer
updated in place, never differentiated.

Paths: ``reference.py`` (direct sum), ``cpu.py`` (the fused C loops of ``cpu_loop.py``, else
F.conv1d with an explicit backward),
``triton_causal_conv1d.py`` (forward, backward and update kernels), ``upstream.py`` (the
causal_conv1d CUDA package when installed and the tensors are on CUDA).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import resolve_backend
from .._seq_idx import packed_to_rows, rows_to_packed, seq_idx_packing
from .._validate import check_cu_seqlens, check_same_device, check_tensor
from . import cpu as _cpu
from . import upstream as _upstream
from .packing import final_states as _final_states
from .reference import causal_conv1d_reference, causal_conv1d_update_reference

__all__ = ["causal_conv1d", "causal_conv1d_update", "causal_conv1d_reference", "causal_conv1d_update_reference"]

_ACTIVATIONS = (None, "silu", "swish")


def _impl(backend: str):
    if backend == "triton":
        from . import triton_causal_conv1d
        return triton_causal_conv1d
    return _cpu


@torch.library.custom_op("parazoo::causal_conv1d", mutates_args=())
def _conv_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             initial_states: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], activation: str,
             backend: str) -> torch.Tensor:
    return _impl(backend).causal_conv1d_fwd(x, weight, bias, initial_states, cu_seqlens, activation)


@_conv_op.register_fake
def _(x, weight, bias, initial_states, cu_seqlens, activation, backend):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("parazoo::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 initial_states: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], activation: str,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db, dinit = _impl(backend).causal_conv1d_bwd(dy, x, weight, bias, initial_states, cu_seqlens, activation)
    # custom ops return tensors only: an absent input's gradient is an empty placeholder
    return dx, dw, (db if db is not None else x.new_empty(0)), (dinit if dinit is not None else x.new_empty(0))


@_conv_bwd_op.register_fake
def _(dy, x, weight, bias, initial_states, cu_seqlens, activation, backend):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(weight),
            torch.empty_like(bias) if bias is not None else x.new_empty(0),
            torch.empty(initial_states.shape, dtype=initial_states.dtype, device=x.device)
            if initial_states is not None else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, initial_states, cu_seqlens, activation, backend = inputs
    ctx.save_for_backward(x, weight, bias, initial_states, cu_seqlens)
    ctx.activation, ctx.backend = activation, backend


def _backward(ctx, dy):
    x, weight, bias, initial_states, cu_seqlens = ctx.saved_tensors
    dx, dw, db, dinit = _conv_bwd_op(dy, x, weight, bias, initial_states, cu_seqlens, ctx.activation, ctx.backend)
    return (dx, dw, db if bias is not None else None, dinit if initial_states is not None else None,
            None, None, None)


_conv_op.register_autograd(_backward, setup_context=_setup_context)


def _check_activation(activation, op):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: argument 'activation' must be one of {list(_ACTIVATIONS)}, got {activation!r}")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, initial_states: torch.Tensor | None = None,
                  return_final_states: bool = False, cu_seqlens: torch.Tensor | None = None,
                  backend: str = "auto", *, seq_idx: torch.Tensor | None = None):
    """Causal depthwise conv1d over time (see the module docstring).

    x: (batch, dim, L); weight: (dim, width); bias: (dim,) or None; activation None/"silu"/"swish";
    initial_states: (batch, dim, width-1) ((n_seqs, dim, width-1) with cu_seqlens) or None;
    cu_seqlens: (n_seqs + 1,) int cumulative starts of packed sequences (batch must be 1);
    seq_idx: (batch, L) int sequence index of every token (not with cu_seqlens).
    Returns y (batch, dim, L) in x's dtype [, final_states shaped like initial_states].
    """
    op = "causal_conv1d"
    if seq_idx is not None:
        return _conv_seq_idx(x, weight, bias, activation, initial_states, return_final_states, cu_seqlens,
                             backend, seq_idx)
    dims = {}
    check_tensor("x", x, op=op, shape=("batch", "dim", "L"), dims=dims)
    check_tensor("weight", weight, op=op, shape=("dim", "width"), dims=dims)
    if dims["width"] < 1:
        raise ValueError(f"{op}: argument 'weight' must have shape (dim, width) with width >= 1, got {tuple(weight.shape)}")
    check_tensor("bias", bias, op=op, shape=("dim",), dims=dims, optional=True)
    _check_activation(activation, op)
    if not isinstance(return_final_states, bool):
        raise ValueError(f"{op}: argument 'return_final_states' must be a bool, got {return_final_states!r}")
    check_same_device(op, x=x, weight=weight, bias=bias, initial_states=initial_states, cu_seqlens=cu_seqlens)
    check_cu_seqlens(cu_seqlens, dims["L"], dims["batch"], op=op)
    n_states = dims["batch"] if cu_seqlens is None else cu_seqlens.numel() - 1
    check_tensor("initial_states", initial_states, op=op, shape=(n_states, dims["dim"], dims["width"] - 1),
                 optional=True)
    backend = resolve_backend(backend, x, weight, bias, initial_states, op=op)
    if backend == "reference":
        return causal_conv1d_reference(x, weight, bias, activation, initial_states, return_final_states, cu_seqlens)
    if backend == "triton":
        fn = _upstream.fn_for(x, weight, initial_states, cu_seqlens)
        if fn is not None:
            return _upstream.call_fn(fn, x, weight, bias, activation, initial_states, return_final_states)
    y = _conv_op(x, weight, bias, initial_states, cu_seqlens, "silu" if activation else "", backend)
    if return_final_states:
        return y, _final_states(x, initial_states, cu_seqlens, dims["width"])
    return y


def _conv_seq_idx(x, weight, bias, activation, initial_states, return_final_states, cu_seqlens, backend, seq_idx):
    """causal_conv1d with seq_idx: the rows laid end to end as one packed row cut by ``SeqIdxPacking``."""
    op = "causal_conv1d"
    if cu_seqlens is not None:
        raise ValueError(f"{op}: give packed sequences as 'seq_idx' or as 'cu_seqlens', not both")
    dims = {}
    check_tensor("x", x, op=op, shape=("batch", "dim", "L"), dims=dims)
    check_tensor("weight", weight, op=op, shape=("dim", "width"), dims=dims)
    check_tensor("initial_states", initial_states, op=op, shape=("batch", "dim", max(dims["width"] - 1, 0)),
                 optional=True, dims=dims)
    batch, L = x.shape[0], x.shape[2]
    packing = seq_idx_packing(seq_idx, batch, L, x.device, op)
    if packing is None:                                         # L = 0: nothing to cut
        return causal_conv1d(x, weight, bias, activation, initial_states, return_final_states, None, backend)
    if resolve_backend(backend, x, weight, bias, initial_states, op=op) == "triton":
        fn = _upstream.fn_for_seq_idx(x, weight, initial_states, return_final_states)
        if fn is not None:
            _check_activation(activation, op)
            return _upstream.call_fn(fn, x, weight, bias, activation, None, False, seq_idx)
    out = causal_conv1d(rows_to_packed(x), weight, bias, activation, packing.initial(initial_states),
                        return_final_states, packing.cu_seqlens, backend)      # (1, dim, batch * L)
    y = packed_to_rows(out[0] if return_final_states else out, batch)
    return (y, packing.row_finals(out[1])) if return_final_states else y


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, activation: str | None = None,
                         backend: str = "auto") -> torch.Tensor:
    """Decode step(s) through a rolling window; updates conv_state IN PLACE.

    x: (batch, dim) one new input, or (batch, dim, seqlen) several; conv_state: (batch, dim, S)
    with S >= width-1 (S = width as upstream, or width-1), same device as x; weight: (dim, width);
    bias: (dim,) or None. Returns y shaped like x. Equals the matching steps of causal_conv1d with
    initial_states = conv_state[..., S-(width-1):].
    """
    op = "causal_conv1d_update"
    dims = {}
    check_tensor("x", x, op=op, ndim=(2, 3))
    check_tensor("x", x, op=op, shape=("batch", "dim") + ((None,) if x.dim() == 3 else ()), dims=dims)
    check_tensor("weight", weight, op=op, shape=("dim", "width"), dims=dims)
    if dims["width"] < 1:
        raise ValueError(f"{op}: argument 'weight' must have shape (dim, width) with width >= 1, got {tuple(weight.shape)}")
    check_tensor("conv_state", conv_state, op=op, shape=("batch", "dim", None), dims=dims)
    if conv_state.shape[-1] < dims["width"] - 1:
        raise ValueError(f"{op}: argument 'conv_state' must have shape (batch, dim, S) with S >= width-1 = "
                         f"{dims['width'] - 1}, got {tuple(conv_state.shape)}")
    check_tensor("bias", bias, op=op, shape=("dim",), dims=dims, optional=True)
    _check_activation(activation, op)
    check_same_device(op, x=x, conv_state=conv_state, weight=weight, bias=bias)
    backend = resolve_backend(backend, x, conv_state, weight, bias, op=op)
    if backend == "reference":
        return causal_conv1d_update_reference(x, conv_state, weight, bias, activation)
    if backend == "triton":
        fn = _upstream.update_for(x, conv_state, weight)
        if fn is not None:
            return _upstream.call_update(fn, x, conv_state, weight, bias, activation)
        from .triton_causal_conv1d import causal_conv1d_update_triton
        return causal_conv1d_update_triton(x, conv_state, weight, bias, "silu" if activation else "")
    return _cpu.causal_conv1d_update_torch(x, conv_state, weight, bias, activation)
