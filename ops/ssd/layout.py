"""Chunk layout shared by the CPU and Triton paths of SSD.

Both paths work on a padded layout (S, Cs * Q, ...) in which every chunk of Q positions belongs to
exactly one sequence, so a state reset only ever happens at a chunk start:

* dense input (b, L, ...): S = b rows of Cs = ceil(L / Q) chunks, the last one zero-padded
  (no copy when Q divides L); chunk (s, c) belongs to sequence s.
* packed input (1, L, ...) with cu_seqlens [0, l1, ..., L]: S = 1 row; sequence k gets
  max(1, ceil(l_k / Q)) chunks of its own, zero-padded at its end.

Padding positions carry dt' = 0, x = B = C = 0: their decay is exp(0) = 1 and they add nothing, so
the state after a sequence's last (padded) chunk is its final state.
``chunk_seq`` (S, Cs) gives each chunk's sequence index into initial/final states (n_seqs, H, P, N);
a chunk starts a sequence when it is the row's first or its sequence differs from the previous one.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

__all__ = ["ChunkLayout", "make_layout"]


@dataclasses.dataclass
class ChunkLayout:
    b: int                      # batch of the user's tensors
    L: int                      # their sequence length
    Q: int                      # chunk size
    S: int                      # rows of the padded layout
    Cs: int                     # chunks per row
    n_seqs: int                 # sequences (= b when dense)
    chunk_seq: torch.Tensor     # (S, Cs) int32, sequence of each chunk
    starts: list                # (s, c) pairs where a sequence starts (state reset)
    ends: list                  # (s, c) of each sequence's last chunk, in sequence order
    pos: torch.Tensor | None    # (L,) int64 packed position of each token (cu_seqlens only)

    @property
    def Lp(self) -> int:
        return self.Cs * self.Q

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """(b, L, ...) -> (S, Lp, ...), zero-padded; differentiable."""
        if self.pos is None:
            if self.Lp == self.L:
                return t
            pad = [0, 0] * (t.dim() - 2) + [0, self.Lp - self.L]
            return F.pad(t, pad)
        out = t.new_zeros((1, self.Lp) + tuple(t.shape[2:]))
        return out.index_copy(1, self.pos, t)

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        """(S, Lp, ...) -> (b, L, ...); differentiable (the adjoint of pack on real positions)."""
        if self.pos is None:
            return t if self.Lp == self.L else t[:, :self.L]
        return t.index_select(1, self.pos)

    def chunk_seq_bordered(self) -> torch.Tensor:
        """(S, Cs + 2) int32: chunk_seq with a -1 column on both sides, so that kernels read the
        previous and next chunk's sequence without masked loads."""
        border = torch.full((self.S, 1), -1, dtype=torch.int32, device=self.chunk_seq.device)
        return torch.cat([border, self.chunk_seq, border], 1).contiguous()

    def chunk_is_first(self) -> torch.Tensor:
        """(S, Cs) bool: the chunk starts a sequence (state = initial state there)."""
        f = torch.zeros(self.S, self.Cs, dtype=torch.bool)
        for s, c in self.starts:
            f[s, c] = True
        return f

    def chunk_is_last(self) -> torch.Tensor:
        """(S, Cs) bool: the chunk ends a sequence (state after it = final state)."""
        f = torch.zeros(self.S, self.Cs, dtype=torch.bool)
        for s, c in self.ends:
            f[s, c] = True
        return f


def make_layout(b: int, L: int, Q: int, cu_seqlens: torch.Tensor | None, device) -> ChunkLayout:
    if cu_seqlens is None:
        Cs = max(1, -(-L // Q))
        chunk_seq = torch.arange(b, dtype=torch.int32)[:, None].expand(b, Cs).contiguous()
        return ChunkLayout(b, L, Q, b, Cs, b, chunk_seq.to(device), [(s, 0) for s in range(b)],
                           [(s, Cs - 1) for s in range(b)], None)
    bounds = [int(v) for v in cu_seqlens.tolist()]
    chunk_seq, starts, ends, pos = [], [], [], []
    for k in range(len(bounds) - 1):
        n = bounds[k + 1] - bounds[k]
        nc = max(1, -(-n // Q))
        first = len(chunk_seq)
        pos.append(torch.arange(n, dtype=torch.int64) + first * Q)
        starts.append((0, first))
        ends.append((0, first + nc - 1))
        chunk_seq += [k] * nc
    Cs = len(chunk_seq)
    pos_t = torch.cat(pos) if pos else torch.zeros(0, dtype=torch.int64)
    return ChunkLayout(b, L, Q, 1, Cs, len(bounds) - 1, torch.tensor([chunk_seq], dtype=torch.int32, device=device),
                       starts, ends, pos_t.to(device))
