"""torch.library registration shared by the linear-recurrence ops (``linear_scan``, ``block_scan``).

    parazoo::<name>(a, b, h0, reverse, backend) -> h                  h_t = a_t (x) h_{t-1} + b_t
    parazoo::<name>_bwd(gh, a, h, h0, reverse, backend) -> (da, db, dh0)

(x) is the element-wise product (linear_scan: a, b, h (B, T, *), h0 (B, *)) or a K x K mat-vec
(block_scan: a (B, T, *, K, K), b, h (B, T, *, K), h0 (B, *, K)). Inside, the channel dims * are
flattened to one D and tensors made contiguous; ``backend`` is already resolved ("cpu" or
"triton"). The backward is its own custom op (a reverse scan), so torch.compile sees two opaque
kernels, and register_autograd connects them. Gradients come back in each input's dtype.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch

from .reference import state_dtype

__all__ = ["make_scan_op"]


def make_scan_op(name: str, modules: dict[str, str], state_tail: int) -> Callable:
    """Register parazoo::<name> and its backward; returns the forward op.

    modules: backend -> module (relative to parazoo.ops) defining ``<name>_fwd`` and ``<name>_bwd``
    on flattened tensors. state_tail: trailing state dims after the channels (0 diag, 1 block);
    the coefficient has 2 * state_tail trailing dims.
    """
    coef_tail = 2 * state_tail

    def impl(backend: str):
        mod = importlib.import_module(modules[backend], package="parazoo.ops")
        return getattr(mod, name + "_fwd"), getattr(mod, name + "_bwd")

    def flat(x: torch.Tensor | None, lead: int, tail: int) -> torch.Tensor | None:  # (lead.., *, tail..) -> (lead.., D, tail..)
        if x is None:
            return None
        return x.reshape(*x.shape[:lead], -1, *x.shape[x.dim() - tail:]).contiguous()

    def state_shape(b: torch.Tensor) -> torch.Size:
        return b.shape[:1] + b.shape[2:]

    @torch.library.custom_op(f"parazoo::{name}", mutates_args=())
    def fwd_op(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool,
               backend: str) -> torch.Tensor:
        out_dtype = torch.promote_types(a.dtype, b.dtype)
        if b.numel() == 0:
            return torch.zeros(b.shape, dtype=out_dtype, device=b.device)
        fwd, _ = impl(backend)
        h = fwd(flat(a, 2, coef_tail), flat(b, 2, state_tail), flat(h0, 1, state_tail), reverse)
        return h.to(out_dtype).reshape(b.shape)

    @fwd_op.register_fake
    def _(a, b, h0, reverse, backend):
        return torch.empty(b.shape, dtype=torch.promote_types(a.dtype, b.dtype), device=b.device)

    @torch.library.custom_op(f"parazoo::{name}_bwd", mutates_args=())
    def bwd_op(gh: torch.Tensor, a: torch.Tensor, h: torch.Tensor, h0: Optional[torch.Tensor],
               reverse: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sd = state_dtype(a, h, h0)
        if h.numel() == 0:
            return (torch.zeros(a.shape, dtype=sd, device=a.device), torch.zeros(h.shape, dtype=sd, device=a.device),
                    torch.zeros(state_shape(h), dtype=sd, device=a.device))
        _, bwd = impl(backend)
        da, db, dh0 = bwd(flat(gh, 2, state_tail), flat(a, 2, coef_tail), flat(h, 2, state_tail),
                          flat(h0, 1, state_tail), reverse)
        return da.to(sd).reshape(a.shape), db.to(sd).reshape(h.shape), dh0.to(sd).reshape(state_shape(h))

    @bwd_op.register_fake
    def _(gh, a, h, h0, reverse, backend):
        sd = state_dtype(a, h, h0)
        return (torch.empty(a.shape, dtype=sd, device=a.device), torch.empty(h.shape, dtype=sd, device=a.device),
                torch.empty(state_shape(h), dtype=sd, device=a.device))

    def setup_context(ctx, inputs, output):
        a, b, h0, reverse, backend = inputs
        ctx.save_for_backward(a, output, h0)
        ctx.reverse, ctx.backend, ctx.b_dtype = reverse, backend, b.dtype

    def backward(ctx, gh):
        a, h, h0 = ctx.saved_tensors
        da, db, dh0 = bwd_op(gh, a, h, h0, ctx.reverse, ctx.backend)
        return da.to(a.dtype), db.to(ctx.b_dtype), (None if h0 is None else dh0.to(h0.dtype)), None, None

    fwd_op.register_autograd(backward, setup_context=setup_context)
    return fwd_op
