"""mamba_ssm's ``seq_idx`` convention for packed sequences, carried by parazoo's ``cu_seqlens``.

mamba_ssm's Mamba-2 path (``mamba_chunk_scan_combined``, ``causal_conv1d_fn``) marks packed
sequences with seq_idx (batch, L): the index of the sequence each token belongs to. The state (the
conv window) restarts wherever seq_idx changes along a row. parazoo's packed ops take cu_seqlens on
one batch-1 row instead. ``SeqIdxPacking`` lays the batch rows end to end as one row of batch * L
tokens and cuts it at every row start and at every change of seq_idx:

    seq_idx = [[0, 0, 1, 1, 1],        ->  cu_seqlens = [0, 2, 5, 6, 10]  (4 sequences)
               [0, 3, 3, 3, 3]]

Initial states follow mamba_ssm: initial_states[r] (one per batch row) is the state before the
tokens of row r whose seq_idx is 0 at the start of the row; a row starting at another index starts
from zeros, and so does every later sequence of a row. The final state of row r is the state at the
end of its last sequence. seq_idx must be >= 0 and non-decreasing along each row (mamba_ssm does not
check this; a sequence index that comes back would make its kernels mix unrelated tokens).

Layouts: time-second ops (ssd_scan, (batch, L, ...)) lay the rows end to end with a reshape;
time-last ones (causal_conv1d, selective_scan, (batch, ..., L)) with ``rows_to_packed`` (a copy when
batch > 1) and back with ``packed_to_rows``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SeqIdxPacking", "check_seq_idx", "packed_to_rows", "rows_to_packed", "seq_idx_packing"]


@dataclass(frozen=True)
class SeqIdxPacking:
    """How a (batch, L) seq_idx maps onto one packed row of batch * L tokens."""
    cu_seqlens: torch.Tensor    # (n_seqs + 1,) int64, on the tokens' device
    first: torch.Tensor         # (batch,) packed index of each row's first sequence
    last: torch.Tensor          # (batch,) packed index of each row's last sequence
    init_rows: torch.Tensor     # rows whose seq_idx starts at 0: they start from initial_states[r]

    @property
    def n_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1

    def initial(self, initial_states: torch.Tensor | None) -> torch.Tensor | None:
        """Per-row initial states (batch, ...) -> per-sequence ones (n_seqs, ...), zeros where none applies."""
        if initial_states is None:
            return None
        out = initial_states.new_zeros(self.n_seqs, *initial_states.shape[1:])
        return out.index_copy(0, self.first.index_select(0, self.init_rows),
                              initial_states.index_select(0, self.init_rows))

    def row_finals(self, finals: torch.Tensor) -> torch.Tensor:
        """Per-sequence final states (n_seqs, ...) -> each row's last one (batch, ...)."""
        return finals.index_select(0, self.last)


def check_seq_idx(seq_idx, batch: int, L: int, device, op: str) -> None:
    """ValueError naming 'seq_idx' unless it is an integer tensor (batch, L) on ``device`` (no host read:
    its values are checked by ``seq_idx_packing``)."""
    if not isinstance(seq_idx, torch.Tensor) or seq_idx.dtype.is_floating_point or seq_idx.dtype.is_complex \
            or seq_idx.dtype == torch.bool:
        raise ValueError(f"{op}: argument 'seq_idx' must be an integer tensor, got "
                         f"{getattr(seq_idx, 'dtype', type(seq_idx).__name__)}")
    if tuple(seq_idx.shape) != (batch, L):
        raise ValueError(f"{op}: argument 'seq_idx' must have shape (batch, L) = ({batch}, {L}), "
                         f"got {tuple(seq_idx.shape)}")
    if seq_idx.device != torch.device(device):
        raise ValueError(f"{op}: argument 'seq_idx' must be on {device} like the other tensors, got {seq_idx.device}")


def seq_idx_packing(seq_idx, batch: int, L: int, device, op: str) -> SeqIdxPacking | None:
    """Check seq_idx (an integer tensor (batch, L) on ``device``, >= 0, non-decreasing along L) and
    build its packing (None when L = 0: there is nothing to cut). Reads seq_idx on the host (one
    synchronisation on CUDA), as cu_seqlens does."""
    check_seq_idx(seq_idx, batch, L, device, op)
    if L == 0:
        return None
    s = seq_idx.detach().to("cpu", torch.int64)
    if bool((s < 0).any()):
        raise ValueError(f"{op}: argument 'seq_idx' must be >= 0, got a minimum of {int(s.min())}")
    if L > 1 and bool((s[:, 1:] < s[:, :-1]).any()):
        r, t = (s[:, 1:] < s[:, :-1]).nonzero()[0].tolist()
        raise ValueError(f"{op}: argument 'seq_idx' must be non-decreasing along L, got row {r}: "
                         f"{int(s[r, t])} at t={t} then {int(s[r, t + 1])}")
    starts = torch.ones(batch, L, dtype=torch.bool)
    if L > 1:
        starts[:, 1:] = s[:, 1:] != s[:, :-1]
    cu = torch.cat([starts.flatten().nonzero().squeeze(1), torch.tensor([batch * L])])
    per_row = starts.sum(1)
    last = per_row.cumsum(0) - 1
    first = last - per_row + 1
    init_rows = (s[:, 0] == 0).nonzero().squeeze(1)
    return SeqIdxPacking(cu.to(device), first.to(device), last.to(device), init_rows.to(device))


def rows_to_packed(t: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, ..., L) -> (1, ..., batch * L): the rows of a time-last tensor end to end (a copy when batch > 1)."""
    if t is None:
        return None
    return t.movedim(0, -2).reshape(1, *t.shape[1:-1], t.shape[0] * t.shape[-1])


def packed_to_rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    """(1, ..., batch * L) -> (batch, ..., L), contiguous: the inverse of ``rows_to_packed``."""
    return t.reshape(*t.shape[1:-1], batch, t.shape[-1] // batch).movedim(-2, 0).contiguous()
