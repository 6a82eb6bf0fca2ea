"""Index helpers for packed sequences (cu_seqlens) and the final conv states, shared by all paths.

cu_seqlens (n + 1,) with cu[0] = 0, cu[n] = L: sequence i holds packed positions [cu[i], cu[i+1]).
"""
from __future__ import annotations

import torch


def seq_ids(cu_seqlens: torch.Tensor, L: int) -> torch.Tensor:
    """(L,) int64: the sequence each packed position belongs to."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths, output_size=L)


def final_states(x: torch.Tensor, initial_states: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                 width: int) -> torch.Tensor:
    """The last width-1 inputs of each sequence, left-padded with its initial_states (or zeros).

    x (B, D, L) -> (B, D, width-1); packed: (n_seqs, D, width-1). Plain differentiable torch
    (index_select/cat), in initial_states' dtype when given, else x's."""
    B, D, L = x.shape
    K = width - 1
    dtype = initial_states.dtype if initial_states is not None else x.dtype
    if cu_seqlens is None:
        if L >= K:
            return x[..., L - K:].to(dtype)
        head = initial_states[..., L:] if initial_states is not None else x.new_zeros((B, D, K - L), dtype=dtype)
        return torch.cat([head.to(dtype), x.to(dtype)], dim=-1)
    n = cu_seqlens.numel() - 1
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    v = ends[:, None] - K + torch.arange(K, device=x.device)      # (n, K) packed position wanted
    from_x = v >= starts[:, None]
    # source columns: [x (L) | initial states flattened (n*K) | one zero column]
    init_flat = (initial_states.to(dtype).permute(1, 0, 2).reshape(D, n * K) if initial_states is not None
                 else x.new_zeros((D, 0), dtype=dtype))
    src = torch.cat([x[0].to(dtype), init_flat, x.new_zeros((D, 1), dtype=dtype)], dim=-1)
    j_init = v - starts[:, None] + K                              # index into the sequence's initial state
    from_init = torch.arange(n, device=x.device)[:, None] * K + j_init + L
    zero_col = torch.full_like(v, src.shape[-1] - 1)
    idx = torch.where(from_x, v, from_init if initial_states is not None else zero_col)
    return src[:, idx.reshape(-1)].reshape(D, n, K).permute(1, 0, 2).contiguous()
