"""Public ``rms_norm``: RMSNorm with optional affine weight, swish gate and channel groups.

    z None:                    y = x / sqrt(mean(x^2) + eps) * weight
    norm_before_gate=True:     y = rmsnorm(x) * weight * silu(z)     (RetNet / fla norm-swish-gate)
    norm_before_gate=False:    y = rmsnorm(x * silu(z)) * weight     (Mamba-2 gated RMSNorm)
    group_size: the mean runs over groups of group_size channels (Mamba-2 ngroups); default D.

x, z: (..., D); weight: (D,) or None. Statistics in float32 (float64 for float64 input); y has
x's dtype. Paths: ``reference.py`` (the formula, autograd), ``cpu.py`` (the fused C loops of
``cpu_loop.py``, else torch with an explicit backward), ``triton_rmsnorm.py`` (forward and backward
kernels). The fast paths are registered
as ``torch.library`` custom ops ``parazoo::rms_norm`` / ``parazoo::rms_norm_bwd``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import resolve_backend
from .._validate import check_same_device, check_tensor
from . import cpu as _cpu
from .reference import rms_norm_reference

__all__ = ["rms_norm", "rms_norm_reference"]

_OP = "rms_norm"


def _impl(backend: str):
    if backend == "triton":
        from . import triton_rmsnorm
        return triton_rmsnorm
    return _cpu


@torch.library.custom_op("parazoo::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: Optional[torch.Tensor], z: Optional[torch.Tensor], eps: float,
                 norm_before_gate: bool, group_size: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    y, rstd = _impl(backend).rms_norm_fwd(x, weight, z, eps, norm_before_gate, group_size)
    return y.contiguous(), rstd.contiguous()


# the fakes promise contiguous outputs whatever the inputs' strides (x may be a transposed view), as the
# implementations return: torch.compile asserts the real strides against these
@_rms_norm_op.register_fake
def _(x, weight, z, eps, norm_before_gate, group_size, backend):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return x.new_empty(x.shape), x.new_empty((rows, x.shape[-1] // group_size), dtype=_cpu.compute_dtype(x))


@torch.library.custom_op("parazoo::rms_norm_bwd", mutates_args=())
def _rms_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], z: Optional[torch.Tensor],
                     rstd: torch.Tensor, norm_before_gate: bool, group_size: int,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, dz = _impl(backend).rms_norm_bwd(dy, x, weight, z, rstd, norm_before_gate, group_size)
    # custom ops return tensors only: an absent input's gradient is an empty placeholder
    return (dx.contiguous(), (dw.contiguous() if dw is not None else x.new_empty(0)),
            (dz.contiguous() if dz is not None else x.new_empty(0)))


@_rms_norm_bwd_op.register_fake
def _(dy, x, weight, z, rstd, norm_before_gate, group_size, backend):
    return (x.new_empty(x.shape), weight.new_empty(weight.shape) if weight is not None else x.new_empty(0),
            z.new_empty(z.shape) if z is not None else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, z, eps, norm_before_gate, group_size, backend = inputs
    ctx.save_for_backward(x, weight, z, output[1])
    ctx.norm_before_gate, ctx.group_size, ctx.backend = norm_before_gate, group_size, backend


def _backward(ctx, dy, _drstd):
    x, weight, z, rstd = ctx.saved_tensors
    dx, dw, dz = _rms_norm_bwd_op(dy, x, weight, z, rstd, ctx.norm_before_gate, ctx.group_size, ctx.backend)
    return dx, (dw if weight is not None else None), (dz if z is not None else None), None, None, None, None


_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, z: torch.Tensor | None = None,
             norm_before_gate: bool = True, group_size: int | None = None, backend: str = "auto") -> torch.Tensor:
    """RMSNorm of x over its last dimension (or groups of it), optionally scaled and gated.

    x: (..., D); weight: (D,) or None (no affine); z: gate shaped like x, or None;
    norm_before_gate: True = rmsnorm(x) * weight * silu(z); False = rmsnorm(x * silu(z)) * weight;
    group_size: channels per normalisation group, must divide D (default D).
    Returns y shaped like x, in x's dtype.
    """
    check_tensor("x", x, op=_OP, ndim=None)
    if x.dim() < 1:
        raise ValueError(f"{_OP}: argument 'x' must have shape (..., D) with at least 1 dimension, got {tuple(x.shape)}")
    D = x.shape[-1]
    check_tensor("weight", weight, op=_OP, shape=(D,), optional=True)
    check_tensor("z", z, op=_OP, shape=tuple(x.shape), optional=True)
    check_same_device(_OP, x=x, weight=weight, z=z)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"{_OP}: argument 'eps' must be a non-negative float, got {eps!r}")
    if not isinstance(norm_before_gate, bool):
        raise ValueError(f"{_OP}: argument 'norm_before_gate' must be a bool, got {norm_before_gate!r}")
    if group_size is None:
        group_size = D
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or D % group_size:
        raise ValueError(f"{_OP}: argument 'group_size' must be a positive int dividing D={D} "
                         f"(x has shape {tuple(x.shape)}), got {group_size!r}")
    backend = resolve_backend(backend, x, weight, z, op=_OP)
    if backend == "reference":
        return rms_norm_reference(x, weight, eps, z, norm_before_gate, group_size)
    return _rms_norm_op(x, weight, z, float(eps), norm_before_gate, group_size, backend)[0]
