"""Sequence bookkeeping shared by every path: where each sequence starts and where its last state is read.

Without ``cu_seqlens`` each batch row is one sequence [0, L). With ``cu_seqlens`` (batch 1,
flash-attn convention [0, l1, l1+l2, ..., L]) the packed row holds n_seqs sequences; the state
before the start of sequence i is h_{-1} = initial_state[i] (zeros without initial states) and
the last state of sequence i is h at cu[i+1] - 1 (initial_state[i] or zeros for an empty
sequence, filled in by the caller). Initial and last states are laid out alike,
(batch * n_seqs, dim, N): row b's sequence i at b * n_seqs + i.

    start_id (L,) int32: i where t = cu[i] starts non-empty sequence i, else -1 (t = 0 always starts one)
    end_id   (L,) int32: i where t = cu[i+1] - 1 ends non-empty sequence i, else -1

The kernels replace the carried state by h_{-1} of sequence start_id[t] at every start, so nothing
flows across a boundary, and return d h_{-1} = a_t g_t there.
"""
from __future__ import annotations

import torch

__all__ = ["seq_meta", "empty_seqs"]


def seq_meta(cu_seqlens: torch.Tensor | None, L: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(start_id, end_id, n_seqs) on ``device`` for a length-L (packed) row."""
    start_id = torch.full((L,), -1, dtype=torch.int32)
    end_id = torch.full((L,), -1, dtype=torch.int32)
    if cu_seqlens is None:
        if L:
            start_id[0] = 0
            end_id[L - 1] = 0
        n_seqs = 1
    else:
        cs = cu_seqlens.detach().to("cpu", torch.int64)
        n_seqs = cs.numel() - 1
        starts, stops = cs[:-1], cs[1:]
        nonempty = stops > starts
        ids = torch.arange(n_seqs, dtype=torch.int32)[nonempty]
        start_id[starts[nonempty]] = ids
        end_id[stops[nonempty] - 1] = ids
    return start_id.to(device), end_id.to(device), n_seqs


def empty_seqs(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(n_seqs,) bool on cu_seqlens' device: the sequences without a token (their last state is their initial one)."""
    return cu_seqlens[1:] == cu_seqlens[:-1]
