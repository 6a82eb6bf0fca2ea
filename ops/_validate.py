"""Argument validation shared by the public ops.

Each check raises ValueError naming the argument, what was expected and what was given, so bad
input fails before any kernel runs.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "check_tensor",
    "check_same_device",
    "check_power_of_two",
    "check_cu_seqlens",
]


def _fmt_shape(shape: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_tensor(
    name: str,
    t,
    *,
    op: str = "op",
    shape: Sequence[int | str | None] | None = None,
    ndim: int | Sequence[int] | None = None,
    floating: bool = True,
    allow_complex: bool = False,
    dtypes: Sequence[torch.dtype] | None = None,
    optional: bool = False,
    dims: dict | None = None,
) -> torch.Tensor | None:
    """Validate one tensor argument.

    shape: expected sizes; an int must match exactly, a str names a symbolic size that must be
    equal everywhere it appears (bound in ``dims``, which the caller shares across calls),
    None matches anything. Returns the tensor (or None when optional and not given).
    """
    if t is None:
        if optional:
            return None
        raise ValueError(f"{op}: argument {name!r} is required, got None")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: argument {name!r} must be a torch.Tensor, got {type(t).__name__}")
    if floating:
        if t.is_complex():
            if not allow_complex:
                raise ValueError(f"{op}: argument {name!r} must be a real floating tensor, got complex dtype {t.dtype}")
        elif not t.is_floating_point():
            raise ValueError(f"{op}: argument {name!r} must be a floating tensor, got dtype {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{op}: argument {name!r} must have dtype in {list(dtypes)}, got {t.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise ValueError(f"{op}: argument {name!r} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape):
            raise ValueError(f"{op}: argument {name!r} must have shape {_fmt_shape(shape)}, got {tuple(t.shape)}")
        dims = {} if dims is None else dims
        for i, (want, got) in enumerate(zip(shape, t.shape)):
            if want is None:
                continue
            if isinstance(want, str):
                if want in dims and dims[want] != got:
                    raise ValueError(
                        f"{op}: argument {name!r} has size {got} in dim {i} ({want}), but {want}={dims[want]} "
                        f"from the other arguments; expected shape {_fmt_shape([dims.get(s, s) if isinstance(s, str) else s for s in shape])}, got {tuple(t.shape)}"
                    )
                dims[want] = got
            elif want != got:
                raise ValueError(f"{op}: argument {name!r} must have shape {_fmt_shape(shape)}, got {tuple(t.shape)}")
    return t


def check_same_device(op: str = "op", **tensors) -> torch.device:
    """All given tensors (None skipped) must sit on one device; returns it."""
    device = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{op}: argument {name!r} is on {t.device} but {first!r} is on {device}; all inputs must share one device")
    return device


def check_power_of_two(name: str, value, op: str = "op") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value & (value - 1):
        raise ValueError(f"{op}: argument {name!r} must be a positive power of two, got {value!r}")
    return value


def check_cu_seqlens(cu_seqlens, total_len: int, batch: int, op: str = "op") -> torch.Tensor | None:
    """flash-attn convention: int tensor (n_seqs + 1,), starts at 0, non-decreasing, ends at total_len;
    the packed input has batch size 1."""
    if cu_seqlens is None:
        return None
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: argument 'cu_seqlens' must be an int32/int64 tensor, got {getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{op}: argument 'cu_seqlens' must have shape (n_seqs + 1,), got {tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"{op}: packed sequences (cu_seqlens given) need batch size 1, got {batch}")
    cs = cu_seqlens.detach().cpu()
    if int(cs[0]) != 0 or int(cs[-1]) != total_len or bool((cs[1:] < cs[:-1]).any()):
        raise ValueError(f"{op}: argument 'cu_seqlens' must start at 0, be non-decreasing and end at the sequence length {total_len}, got {cs.tolist()}")
    return cu_seqlens
