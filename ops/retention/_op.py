"""torch.library registration of retention: one forward and one backward custom op for all forms.

``parazoo::retention_fwd(q, k, v, h0, scale, chunk_size, form, impl, want_ht) -> (o, ht)`` and
``parazoo::retention_bwd(q, k, v, h0, do, dht, scale, chunk_size, form, impl) -> (dq, dk, dv, dh0)``
dispatch on form ("chunk" | "parallel" | "recurrent") and impl ("cpu" | "triton") to the
implementations in ``IMPLS``. A tensor output that does not exist (ht without want_ht, dh0 without
h0) is an empty tensor, since custom ops cannot return None. register_fake + register_autograd
make the ops traceable by torch.compile.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

from .common import acc_dtype

__all__ = ["retention_op", "IMPLS"]

# (form, impl) -> (module, forward function, backward function); imported on first use so that
# the CPU path never imports triton.
IMPLS = {
    ("chunk", "cpu"): ("cpu_chunk", "chunk_fwd", "chunk_bwd"),
    ("parallel", "cpu"): ("cpu_chunk", "parallel_fwd", "parallel_bwd"),
    ("recurrent", "cpu"): ("cpu_recurrent", "recurrent_fwd", "recurrent_bwd"),
    ("chunk", "triton"): ("triton_chunk", "chunk_fwd", "chunk_bwd"),
    ("parallel", "triton"): ("triton_chunk", "parallel_fwd", "parallel_bwd"),
    ("recurrent", "triton"): ("triton_recurrent", "recurrent_fwd", "recurrent_bwd"),
}


def _impl(form: str, impl: str, which: int):
    mod, *fns = IMPLS[(form, impl)]
    return getattr(importlib.import_module(f"{__package__}.{mod}"), fns[which])


def _none_if_empty(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None or t.numel() == 0 else t


@torch.library.custom_op("parazoo::retention_fwd", mutates_args=())
def _retention_fwd(q: Tensor, k: Tensor, v: Tensor, h0: Optional[Tensor], scale: float, chunk_size: int,
                   form: str, impl: str, want_ht: bool) -> tuple[Tensor, Tensor]:
    o, ht = _impl(form, impl, 0)(q, k, v, h0, scale, chunk_size, want_ht)
    if ht is None:
        ht = q.new_empty(0, dtype=acc_dtype(q.dtype))
    return o.contiguous(), ht.contiguous()


@_retention_fwd.register_fake
def _(q, k, v, h0, scale, chunk_size, form, impl, want_ht):
    B, T, H, K = q.shape
    ht_shape = (B, H, K, v.shape[-1]) if want_ht else (0,)
    return v.new_empty(v.shape), q.new_empty(ht_shape, dtype=acc_dtype(q.dtype))


@torch.library.custom_op("parazoo::retention_bwd", mutates_args=())
def _retention_bwd(q: Tensor, k: Tensor, v: Tensor, h0: Optional[Tensor], do: Tensor, dht: Optional[Tensor],
                   scale: float, chunk_size: int, form: str, impl: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, dh0 = _impl(form, impl, 1)(q, k, v, h0, do, _none_if_empty(dht), scale, chunk_size)
    if dh0 is None:
        dh0 = q.new_empty(0)
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dh0.contiguous()


@_retention_bwd.register_fake
def _(q, k, v, h0, do, dht, scale, chunk_size, form, impl):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), (
        q.new_empty(0) if h0 is None else h0.new_empty(h0.shape))


def _setup_context(ctx, inputs, output):
    q, k, v, h0, scale, chunk_size, form, impl, want_ht = inputs
    ctx.save_for_backward(q, k, v, h0)
    ctx.args = (scale, chunk_size, form, impl)


def _backward(ctx, do, dht):
    q, k, v, h0 = ctx.saved_tensors
    dq, dk, dv, dh0 = _retention_bwd(q, k, v, h0, do.contiguous(), None if dht is None else dht.contiguous(), *ctx.args)
    return dq, dk, dv, (None if h0 is None else dh0), None, None, None, None, None


_retention_fwd.register_autograd(_backward, setup_context=_setup_context)


def retention_op(q, k, v, h0, scale: float, chunk_size: int, form: str, impl: str, want_ht: bool):
    """Run the registered op; returns (o, final_state or None)."""
    o, ht = _retention_fwd(q, k, v, h0, float(scale), int(chunk_size), form, impl, bool(want_ht))
    return o, (ht if want_ht else None)
