"""Causal depthwise 1-D convolution (Mamba's short conv): the plain definition, ground truth in tests.

For x (batch, dim, L), weight (dim, width), bias (dim,):

    y[b, d, t] = act( bias[d] + sum_{k=0}^{width-1} weight[d, k] * x[b, d, t - (width-1) + k] )

with act = identity or silu(v) = v * sigmoid(v), and x at negative t taken from
initial_states[b, d, (width-1) + t] (the width-1 inputs before the sequence), or 0 without them.
final_states[b, d, j] = x[b, d, L - (width-1) + j], again left-padded with initial_states/zeros
when L < width-1 (it is exactly the initial_states of a continuation).

Packed sequences (cu_seqlens, flash-attn convention, batch 1): sequence i occupies
t in [cu[i], cu[i+1]); it sees zeros (or initial_states[i]) before cu[i], never the previous
sequence, and has its own final_states[i]. States are then (n_seqs, dim, width-1).

causal_conv1d_update feeds new inputs through a rolling window conv_state (batch, dim, S),
S >= width-1, holding the last S inputs: per new input x_t,
    y_t = act(bias + sum_k weight[:, k] * [conv_state[..., S-(width-1):], x_t][..., k]);
    conv_state <- [conv_state, x_t][..., 1:]
"""
from __future__ import annotations

import torch


def _act(v: torch.Tensor, activation: str | None) -> torch.Tensor:
    return v if activation is None else v * torch.sigmoid(v)


def _segments(x: torch.Tensor, cu_seqlens: torch.Tensor | None):
    """(batch row, start, end, state index) for every independent sequence."""
    if cu_seqlens is None:
        return [(b, 0, x.shape[-1], b) for b in range(x.shape[0])]
    cu = [int(c) for c in cu_seqlens.tolist()]
    return [(0, cu[i], cu[i + 1], i) for i in range(len(cu) - 1)]


def causal_conv1d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                            activation: str | None = None, initial_states: torch.Tensor | None = None,
                            return_final_states: bool = False, cu_seqlens: torch.Tensor | None = None):
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    B, D, L = x.shape
    W = weight.shape[1]
    w = weight.to(ct)                                             # (D, W)
    rows = [[] for _ in range(B)]
    finals = []
    for b, s, e, i in _segments(x, cu_seqlens):
        hist = initial_states[i].to(ct) if initial_states is not None else x.new_zeros((D, W - 1), dtype=ct)
        seq = torch.cat([hist, x[b, :, s:e].to(ct)], dim=-1)      # (D, W-1 + n): inputs from t = s-(W-1)
        n = e - s
        acc = sum(w[:, k:k + 1] * seq[:, k:k + n] for k in range(W))  # (D, n)
        if bias is not None:
            acc = acc + bias.to(ct)[:, None]
        rows[b].append(_act(acc, activation))
        finals.append(seq[:, seq.shape[-1] - (W - 1):])           # (D, W-1)
    y = torch.stack([torch.cat(r, dim=-1) for r in rows]).to(x.dtype)
    if not return_final_states:
        return y
    dtype = initial_states.dtype if initial_states is not None else x.dtype
    return y, torch.stack(finals).to(dtype)


def causal_conv1d_update_reference(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                                   bias: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """One step at a time through the rolling window; updates conv_state in place."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    W = weight.shape[1]
    S = conv_state.shape[-1]
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x                   # (B, D, T)
    state = conv_state.to(ct)
    w = weight.to(ct)
    ys = []
    for t in range(x3.shape[-1]):
        xt = x3[..., t:t + 1].to(ct)                              # (B, D, 1)
        window = torch.cat([state[..., S - (W - 1):], xt], dim=-1)  # (B, D, W)
        acc = (window * w).sum(dim=-1)
        if bias is not None:
            acc = acc + bias.to(ct)
        ys.append(_act(acc, activation))
        full = torch.cat([state, xt], dim=-1)
        state = full[..., full.shape[-1] - S:]
    conv_state.copy_(state)
    y = torch.stack(ys, dim=-1).to(x.dtype)
    return y[..., 0] if x.dim() == 2 else y
