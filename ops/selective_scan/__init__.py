"""Mamba-1 selective scan (Gu & Dao 2023) with mamba_ssm's ``selective_scan_fn`` semantics and layouts.

    delta'_t = softplus(delta_t + delta_bias) if delta_softplus else delta_t + delta_bias
    h_t = exp(delta'_t * A) * h_{t-1} + delta'_t * B_t * u_t          (h_{-1} = initial_state or 0, h in R^N)
    y_t = C_t . h_t + D * u_t ;   y = y * silu(z) if z is given

u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (batch, N, L) or (batch, G, N, L), channel d
reading group d // (dim // G); D, delta_bias: (dim,). ``cu_seqlens`` (batch 1, [0, l1, ..., L])
restarts the state at every packed-sequence boundary. ``initial_state`` continues a scan from a state
(parazoo's extension): (batch, dim, N), or one per packed sequence (n_seqs, dim, N) with cu_seqlens,
so a packed batch of documents can go on from each document's state. ``selective_state_update`` is one
decode step of the same recurrence on a state (batch, dim, N), updated in place.

Paths (``backend=``): ``reference.py`` (sequential loop, autograd), ``cpu.py`` (fused C loops:
``cpu_block_kernel.py``, 16 channels per vector, for float32 with N <= 256, each group's channels
zero-padded to a multiple of 16 where needed (up to 1.4x the work), else ``cpu_kernel.py``; pure-torch
``cpu_torch.py`` without a compiler), ``triton_fwd.py`` /
``triton_bwd.py`` (Triton kernels, launched by ``triton_scan.py``; ``triton_update.py`` for the
decode step). The fast paths are the ``torch.library`` custom ops
``parazoo::selective_scan`` / ``parazoo::selective_scan_bwd`` with autograd registered, so
gradients reach u, delta, A, B, C, D, z, delta_bias, initial_state (and flow back from last_state), also under
torch.compile. State and accumulation are float32 (float64 for float64 inputs); y has u's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import resolve_backend
from .._seq_idx import packed_to_rows, rows_to_packed, seq_idx_packing
from ._checks import check_scan_args, check_update_args, check_update_heads_args
from ._pointwise import compute_dtype
from ._seqs import empty_seqs
from .reference import selective_scan_reference, selective_state_update_reference
from .state_update import state_update_step

__all__ = ["selective_scan", "selective_state_update", "selective_scan_reference",
           "selective_state_update_reference"]


def _impl(backend: str):
    if backend == "triton":
        from . import triton_scan
        return triton_scan
    from . import cpu
    return cpu


def _empty_if_none(t, like):
    return t if t is not None else like.new_empty(0)


@torch.library.custom_op("parazoo::selective_scan", mutates_args=())
def _scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
             h0: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], delta_softplus: bool, need_ckpt: bool,
             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, last, ckpt = _impl(backend).selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus,
                                                      cu_seqlens, need_ckpt)
    return y.to(u.dtype), last, ckpt


@_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, h0, cu_seqlens, delta_softplus, need_ckpt, backend):
    from .cpu import compute_dtype
    batch, dim, L = u.shape
    N = A.shape[1]
    nseq = 1 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    dt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    chunk = _impl(backend).ckpt_chunk(u, N)
    ckpt = u.new_empty((batch, dim, -(-L // chunk), N) if need_ckpt else (0,), dtype=dt)
    return torch.empty_like(u), u.new_empty(batch * nseq, dim, N, dtype=dt), ckpt


@torch.library.custom_op("parazoo::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(dout: torch.Tensor, dlast: Optional[torch.Tensor], u: torch.Tensor, delta: torch.Tensor,
                 A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                 z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], h0: Optional[torch.Tensor],
                 cu_seqlens: Optional[torch.Tensor], delta_softplus: bool, ckpt: torch.Tensor,
                 backend: str) -> list[torch.Tensor]:
    grads = _impl(backend).selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus,
                                              cu_seqlens, ckpt)
    inputs = (u, delta, A, B, C, D, z, delta_bias, h0)
    # custom ops return tensors only: an absent input's gradient is an empty placeholder. Contiguous, as the fake
    # promises (the inputs are): dB, dC come back as transposed views, and torch.compile asserts the strides
    return [g.to(x.dtype).contiguous() if x is not None else u.new_empty(0) for g, x in zip(grads, inputs)]


@_scan_bwd_op.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, h0, cu_seqlens, delta_softplus, ckpt, backend):
    return [torch.empty_like(x) if x is not None else u.new_empty(0)
            for x in (u, delta, A, B, C, D, z, delta_bias, h0)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, h0, cu_seqlens, delta_softplus, need_ckpt, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, cu_seqlens, output[2])
    ctx.delta_softplus, ctx.backend = delta_softplus, backend
    ctx.mark_non_differentiable(output[2])          # the checkpoints are internal
    ctx.set_materialize_grads(False)                # no zero-filled dlast when the last state is unused


def _backward(ctx, dy, dlast, _dckpt):
    u, delta, A, B, C, D, z, delta_bias, h0, cu_seqlens, ckpt = ctx.saved_tensors
    if ckpt.numel() == 0 and u.numel() > 0:
        raise RuntimeError("selective_scan: backward needs the forward's checkpoints; internal error")
    if dy is None:                                  # only the last state was used
        dy = torch.zeros((), dtype=u.dtype, device=u.device).expand(u.shape)
    grads = _scan_bwd_op(dy, dlast, u, delta, A, B, C, D, z, delta_bias, h0, cu_seqlens,
                         ctx.delta_softplus, ckpt, ctx.backend)
    present = (u, delta, A, B, C, D, z, delta_bias, h0)
    return (*[g if x is not None else None for g, x in zip(grads, present)], None, None, None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, cu_seqlens=None, backend="auto", *, initial_state=None, seq_idx=None):
    """Selective scan with mamba_ssm's ``selective_scan_fn`` signature (real A only).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, G, N, L); D,
    delta_bias: (dim,); cu_seqlens: int tensor [0, l1, l1+l2, ..., L] for packed sequences
    (batch 1). ``initial_state`` (batch, dim, N), or (n_seqs, dim, N) with cu_seqlens, keyword only: the
    state h_{-1} each row (each packed sequence) continues from (zeros when None); differentiable; an empty
    sequence's last state is its initial state. ``seq_idx`` (batch, L)
    int, keyword only: mamba_ssm's Mamba-2 packing convention at any batch size (``ops/_seq_idx.py``):
    the state restarts wherever it changes along a row; initial_state[r] applies to row r's sequence 0.
    Returns y (batch, dim, L) in u's dtype, and with ``return_last_state`` also the final state
    (batch, dim, N) (or (n_seqs, dim, N) with cu_seqlens; each row's last sequence's with seq_idx) in
    float32 (float64 for float64 inputs).
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, cu_seqlens,
                    initial_state=initial_state)
    if seq_idx is not None:
        return _scan_seq_idx(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, cu_seqlens,
                             backend, initial_state, seq_idx)
    backend = resolve_backend(backend, u, delta, A, B, C, D, z, delta_bias, initial_state, op="selective_scan")
    if backend == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                        cu_seqlens, initial_state=initial_state)
    if initial_state is not None and u.shape[2] == 0:         # no step: y is empty, the last state is h_{-1}
        y = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, False)
        return (y, initial_state.to(compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state))
                ) if return_last_state else y
    B4 = B if B.dim() == 4 else B.unsqueeze(1)                # (batch, G, N, L)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    need_ckpt = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(u.device)
    y, last, _ = _scan_op(u.contiguous(), delta.contiguous(), A.contiguous(), B4.contiguous(), C4.contiguous(),
                          None if D is None else D.contiguous(), None if z is None else z.contiguous(),
                          None if delta_bias is None else delta_bias.contiguous(),
                          None if initial_state is None else initial_state.contiguous(), cu_seqlens,
                          bool(delta_softplus), need_ckpt, backend)
    if initial_state is not None and cu_seqlens is not None and return_last_state:
        # the kernels write a last state at a sequence's last token: an empty one keeps its initial state
        empty = empty_seqs(cu_seqlens)[:, None, None]
        last = torch.where(empty, initial_state.to(last.dtype), last)
    return (y, last) if return_last_state else y


def _scan_seq_idx(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, cu_seqlens, backend,
                  initial_state, seq_idx):
    """selective_scan with seq_idx, its other arguments checked: the rows laid end to end as one packed row
    cut by ``SeqIdxPacking`` (a copy of u, delta, z, B, C when batch > 1); initial_state[r] becomes the initial
    state of row r's sequence 0 (if its seq_idx starts at 0), every other sequence starts from zeros."""
    op = "selective_scan"
    if cu_seqlens is not None:
        raise ValueError(f"{op}: give packed sequences as 'seq_idx' or as 'cu_seqlens', not both")
    batch, L = u.shape[0], u.shape[2]
    packing = seq_idx_packing(seq_idx, batch, L, u.device, op)
    if packing is None:                                         # L = 0: nothing to cut
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, None, backend,
                              initial_state=initial_state)
    y, last = selective_scan(rows_to_packed(u), rows_to_packed(delta), A, rows_to_packed(B), rows_to_packed(C), D,
                             rows_to_packed(z), delta_bias, delta_softplus, True, packing.cu_seqlens, backend,
                             initial_state=packing.initial(initial_state))
    y, last = packed_to_rows(y, batch), packing.row_finals(last)   # (batch, dim, L), (batch, dim, N)
    return (y, last) if return_last_state else y


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, backend="auto"):
    """One decode step of the selective scan; ``state`` (batch, dim, N) is updated IN PLACE.

    x, dt, z: (batch, dim); A: (dim, N); B, C: (batch, N) or (batch, G, N); D, dt_bias: (dim,).
    Returns y (batch, dim) in x's dtype; equals one step of ``selective_scan`` continued from state.

    Also mamba_ssm's multi-head layout, in which Mamba-2 decodes: state (batch, H, P, N); x, dt, z
    (batch, H, P); A (H, P, N); D, dt_bias (H, P); B, C (batch, N) or (batch, G, N) with G dividing H
    (head h reads group h // (H / G)). It is the channel layout with dim = H * P (channel h * P + p), so
    head-tied A, dt, D, dt_bias expanded over P and N (stride 0) keep their one exp per channel; returns y
    (batch, H, P), and equals one step of ``ssd_scan`` continued from the state.
    """
    if isinstance(state, torch.Tensor) and state.dim() == 4:
        return _state_update_heads(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend)
    check_update_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return _state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend)


def _state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    """``selective_state_update`` on the channel layout, its arguments checked."""
    backend = resolve_backend(backend, state, x, dt, A, B, C, D, z, dt_bias, op="selective_state_update")
    # autograd may save the old state for the backward: give it a copy, since state is overwritten below
    tensors = (state, x, dt, A, B, C, D, z, dt_bias)
    old = state.clone() if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors) else state
    if backend == "reference":
        y, new_state = selective_state_update_reference(old, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    else:
        y, new_state = state_update_step(old, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend)
    if new_state is not state:                      # the fused CPU loop has written it in place already
        state.copy_(new_state)
    return y


def _heads_to_channels(t, lead):
    """t with its (H, P) dims at lead, lead + 1 merged into one channel dim. A trailing N dim of stride 0 (A
    expanded over the state) stays stride 0: the merged copy, if one is needed, holds one value per channel."""
    if t is None:
        return None
    if t.dim() > lead + 2 and t.stride(-1) == 0:
        return t[..., :1].flatten(lead, lead + 1).expand(*t.shape[:lead], -1, t.shape[-1])
    return t.flatten(lead, lead + 1)


def _state_update_heads(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    """``selective_state_update`` on the multi-head layout: heads flattened into channels, the state updated in
    place through a view (or through a copy written back when its (H, P) dims cannot be merged in place)."""
    check_update_heads_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    batch, H, P, N = state.shape
    try:
        flat = state.view(batch, H * P, N)                         # the same memory: updated in place
    except RuntimeError:
        flat = state.reshape(batch, H * P, N)                      # a copy, written back below
    y = _state_update(flat, *(_heads_to_channels(t, 1) for t in (x, dt)), _heads_to_channels(A, 0), B, C,
                      _heads_to_channels(D, 0), _heads_to_channels(z, 1), _heads_to_channels(dt_bias, 0), dt_softplus,
                      backend)
    if flat.data_ptr() != state.data_ptr():
        state.copy_(flat.view(batch, H, P, N))
    return y.view(batch, H, P)
