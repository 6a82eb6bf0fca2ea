"""Argument validation of ``selective_scan`` and ``selective_state_update`` (before any kernel runs)."""
from __future__ import annotations

import torch

from .._validate import check_cu_seqlens, check_same_device, check_tensor

__all__ = ["check_scan_args", "check_update_args", "check_update_heads_args"]


def _check_A(A, dim, op):
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise ValueError(f"{op}: argument 'A' must be real: mamba_ssm's complex-A variant is not supported, "
                         f"got complex dtype {A.dtype} with shape {tuple(A.shape)}")
    check_tensor("A", A, op=op, ndim=2)
    if A.shape[0] != dim:
        raise ValueError(f"{op}: argument 'A' must have shape (dim={dim}, N), got {tuple(A.shape)}")
    return A.shape[1]


def _check_groups(name, X, dim, ungrouped_ndim, shape_tail, op, dims):
    """B or C: (batch, N, *tail) or (batch, G, N, *tail) with G dividing dim."""
    check_tensor(name, X, op=op, ndim=(ungrouped_ndim, ungrouped_ndim + 1))
    if X.dim() == ungrouped_ndim:
        check_tensor(name, X, op=op, shape=("batch", "N", *shape_tail), dims=dims)
        return
    check_tensor(name, X, op=op, shape=("batch", None, "N", *shape_tail), dims=dims)
    G = X.shape[1]
    if G < 1 or dim % G:
        raise ValueError(f"{op}: argument {name!r} has {G} groups (shape {tuple(X.shape)}), "
                         f"but the number of groups must divide dim={dim}")


def _check_flag(name, v, op):
    if not isinstance(v, bool):
        raise ValueError(f"{op}: argument {name!r} must be a bool, got {v!r}")


def check_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, cu_seqlens,
                    op="selective_scan", initial_state=None):
    dims: dict = {}
    check_tensor("u", u, op=op, shape=("batch", "dim", "L"), dims=dims)
    check_tensor("delta", delta, op=op, shape=("batch", "dim", "L"), dims=dims)
    batch, dim, L = u.shape
    dims["N"] = _check_A(A, dim, op)
    _check_groups("B", B, dim, 3, ("L",), op, dims)
    _check_groups("C", C, dim, 3, ("L",), op, dims)
    check_tensor("D", D, op=op, shape=("dim",), dims=dims, optional=True)
    check_tensor("z", z, op=op, shape=("batch", "dim", "L"), dims=dims, optional=True)
    check_tensor("delta_bias", delta_bias, op=op, shape=("dim",), dims=dims, optional=True)
    _check_flag("delta_softplus", delta_softplus, op)
    _check_flag("return_last_state", return_last_state, op)
    check_cu_seqlens(cu_seqlens, L, batch, op=op)
    if cu_seqlens is not None:                                   # one initial state per packed sequence
        dims["n_seqs"] = cu_seqlens.numel() - 1
    check_tensor("initial_state", initial_state, op=op, dims=dims, optional=True,
                 shape=("batch" if cu_seqlens is None else "n_seqs", "dim", "N"))
    check_same_device(op, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                      initial_state=initial_state)


def check_update_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, op="selective_state_update"):
    dims: dict = {}
    check_tensor("x", x, op=op, shape=("batch", "dim"), dims=dims)
    check_tensor("dt", dt, op=op, shape=("batch", "dim"), dims=dims)
    dim = x.shape[1]
    dims["N"] = _check_A(A, dim, op)
    check_tensor("state", state, op=op, shape=("batch", "dim", "N"), dims=dims)
    _check_groups("B", B, dim, 2, (), op, dims)
    _check_groups("C", C, dim, 2, (), op, dims)
    check_tensor("D", D, op=op, shape=("dim",), dims=dims, optional=True)
    check_tensor("z", z, op=op, shape=("batch", "dim"), dims=dims, optional=True)
    check_tensor("dt_bias", dt_bias, op=op, shape=("dim",), dims=dims, optional=True)
    _check_flag("dt_softplus", dt_softplus, op)
    check_same_device(op, state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)


def check_update_heads_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, op="selective_state_update"):
    """mamba_ssm's multi-head layout (as Mamba-2 decodes): state (batch, H, P, N); x, dt, z (batch, H, P);
    A (H, P, N); D, dt_bias (H, P); B, C (batch, N) or (batch, G, N), G dividing H."""
    dims: dict = {}
    check_tensor("state", state, op=op, shape=("batch", "H", "P", "N"), dims=dims)
    check_tensor("x", x, op=op, shape=("batch", "H", "P"), dims=dims)
    check_tensor("dt", dt, op=op, shape=("batch", "H", "P"), dims=dims)
    if isinstance(A, torch.Tensor) and A.is_complex():
        _check_A(A, None, op)                                    # the complex-A message
    check_tensor("A", A, op=op, shape=("H", "P", "N"), dims=dims)
    for name, X in (("B", B), ("C", C)):
        check_tensor(name, X, op=op, ndim=(2, 3))
        check_tensor(name, X, op=op, shape=("batch", "N") if X.dim() == 2 else ("batch", None, "N"), dims=dims)
        if X.dim() == 3 and (X.shape[1] < 1 or dims["H"] % X.shape[1]):
            raise ValueError(f"{op}: argument {name!r} has {X.shape[1]} groups (shape {tuple(X.shape)}), but with "
                             f"a multi-head state the number of groups must divide the number of heads H={dims['H']}")
    check_tensor("D", D, op=op, shape=("H", "P"), dims=dims, optional=True)
    check_tensor("z", z, op=op, shape=("batch", "H", "P"), dims=dims, optional=True)
    check_tensor("dt_bias", dt_bias, op=op, shape=("H", "P"), dims=dims, optional=True)
    _check_flag("dt_softplus", dt_softplus, op)
    check_same_device(op, state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
