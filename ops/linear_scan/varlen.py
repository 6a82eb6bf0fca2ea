"""Packed variable-length sequences (flash-attn ``cu_seqlens``) for the linear recurrences.

With cu_seqlens = [0, l1, l1+l2, ..., T] the batch-1 input holds n_seqs sequences back to back and
the state restarts at each sequence's first step (its last step when ``reverse``):

    h_s = a_s * h0_i + b_s    at the start s of sequence i    (h0_i = 0 when h0 is None)

which equals the plain scan on  a'_s = 0,  b'_s = b_s + a_s * h0_i  at every start (and a, b
unchanged elsewhere). The rewrite uses differentiable torch ops, so gradients to a, b and the
per-sequence h0 (n_seqs, *) come from the plain scan's backward.
"""
from __future__ import annotations

import torch

__all__ = ["fold_cu_seqlens"]


def fold_cu_seqlens(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, cu_seqlens: torch.Tensor,
                    reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """a, b: (1, T, *); h0: (n_seqs, *) or None. Returns (a', b') for a plain scan without h0."""
    cu = cu_seqlens.to(device=a.device, dtype=torch.long)
    starts, ends = cu[:-1], cu[1:]
    nonempty = ends > starts
    idx = (ends - 1 if reverse else starts)[nonempty]  # first step of every sequence, in scan order
    a2 = a.index_fill(1, idx, 0)
    if h0 is None:
        return a2, b
    src = a.index_select(1, idx) * h0[nonempty].unsqueeze(0).to(a.dtype)  # (1, n, *)
    return a2, b.index_add(1, idx, src.to(b.dtype))
