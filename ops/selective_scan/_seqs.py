"""Sequence bookkeeping shared by every path: where the state resets and where a last state is read.

Without ``cu_seqlens`` each batch row is one sequence [0, L). With ``cu_seqlens`` (batch 1,
flash-attn convention [0, l1, l1+l2, ..., L]) the packed row holds n_seqs sequences; the state
is reset to 0 at every sequence start and the last state of sequence i is h at cu[i+1] - 1
(zeros for an empty sequence).

    reset  (L,) int32: 1 where t starts a sequence (t = 0 unless an initial state is given), else 0
    end_id (L,) int32: i where t = cu[i+1] - 1 ends non-empty sequence i, else -1
"""
from __future__ import annotations

import torch

__all__ = ["seq_meta"]


def seq_meta(cu_seqlens: torch.Tensor | None, L: int, device, has_initial_state: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(reset, end_id, n_seqs) on ``device`` for a length-L (packed) row. With an initial state
    (never together with cu_seqlens) t = 0 is no reset: the state entering it is h_{-1} = initial_state."""
    reset = torch.zeros(L, dtype=torch.int32)
    end_id = torch.full((L,), -1, dtype=torch.int32)
    if cu_seqlens is None:
        if L:
            reset[0] = 0 if has_initial_state else 1
            end_id[L - 1] = 0
        n_seqs = 1
    else:
        cs = cu_seqlens.detach().to("cpu", torch.int64)
        n_seqs = cs.numel() - 1
        starts, stops = cs[:-1], cs[1:]
        nonempty = stops > starts
        reset[starts[nonempty]] = 1
        end_id[stops[nonempty] - 1] = torch.arange(n_seqs, dtype=torch.int32)[nonempty]
        if L:
            reset[0] = 1
    return reset.to(device), end_id.to(device), n_seqs
