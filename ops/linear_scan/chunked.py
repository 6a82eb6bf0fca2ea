"""Pure-torch chunked scan for linear recurrences: the fallback when no C compiler is available.

    h_t = a_t (x) h_{t-1} + b_t          (x) = element-wise product (diagonal) or matrix-vector (block)

Pairs (a, b) compose associatively: (a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2). Time is cut into
chunks of ``CHUNK`` steps; all chunks are scanned at once with log2(CHUNK) Hillis-Steele steps,
vectorised over batch and channels, then one sequential pass over chunk ends carries the state in:
h_t = Acum_t (x) h_carry + Bcum_t. Python loops over T/CHUNK chunks, never over T.

The backward pass is the same scan run the other way with the next step's coefficients (transposed
for blocks): g_t = dL/dh_t + a_{t+1}^T g_{t+1};  dL/db_t = g_t;  dL/da_t = g_t h_{t-1}^T;
dL/dh0 = a_0^T g_0 (indices in scan order). Shared by ``linear_scan`` and ``block_scan``.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["CHUNK", "scan", "shift_next", "shift_prev", "diag_scan", "diag_scan_bwd"]

CHUNK = 64


def scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool,
         compose: Callable, apply: Callable, identity: torch.Tensor) -> torch.Tensor:
    """Generic chunked scan. a: (B, T, *coef); b: (B, T, *state); h0: (B, *state) or None.

    compose(a2, a1) = a2 a1; apply(a, h) = a (x) h (broadcasting over leading dims);
    identity: the neutral coefficient, broadcastable to (*coef). Returns h: (B, T, *state).
    """
    if reverse:
        return scan(a.flip(1), b.flip(1), h0, False, compose, apply, identity).flip(1)
    B, T = b.shape[:2]
    if T == 0:
        return b.clone()
    L = min(CHUNK, T)
    pad = (-T) % L
    if pad:
        a = torch.cat([a, identity.expand(B, pad, *a.shape[2:])], 1)
        b = torch.cat([b, b.new_zeros((B, pad) + b.shape[2:])], 1)
    n = a.shape[1] // L
    A = a.reshape(B, n, L, *a.shape[2:])  # (B, n, L, *coef)
    Bc = b.reshape(B, n, L, *b.shape[2:])  # (B, n, L, *state)
    k = 1
    while k < L:  # inclusive scan inside every chunk at once
        Bc = torch.cat([Bc[:, :, :k], apply(A[:, :, k:], Bc[:, :, :-k]) + Bc[:, :, k:]], 2)
        A = torch.cat([A[:, :, :k], compose(A[:, :, k:], A[:, :, :-k])], 2)
        k *= 2
    out = torch.empty_like(Bc)
    h = h0
    for c in range(n):  # carry across chunks
        out[:, c] = Bc[:, c] if h is None else apply(A[:, c], h.unsqueeze(1)) + Bc[:, c]
        h = out[:, c, -1]
    return out.reshape(B, n * L, *b.shape[2:])[:, :T]


def shift_next(x: torch.Tensor, reverse: bool) -> torch.Tensor:
    """x at the next step in scan order, zeros after the last step. x: (B, T, ...)."""
    z = torch.zeros_like(x[:, :1])
    return torch.cat([z, x[:, :-1]], 1) if reverse else torch.cat([x[:, 1:], z], 1)


def shift_prev(h: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """h at the previous step in scan order, h0 (or zeros) before the first. h: (B, T, ...)."""
    first = torch.zeros_like(h[:, :1]) if h0 is None else h0.unsqueeze(1).to(h.dtype)
    return torch.cat([h[:, 1:], first], 1) if reverse else torch.cat([first, h[:, :-1]], 1)


def _mul(x, y):
    return x * y


def diag_scan(a, b, h0, reverse):
    """Element-wise recurrence. a, b: (B, T, D); h0: (B, D) or None."""
    return scan(a, b, h0, reverse, _mul, _mul, torch.ones((), dtype=a.dtype, device=a.device))


def diag_scan_bwd(go, a, h, h0, reverse):
    """Returns (da, db, dh0) for the element-wise recurrence; dh0 has shape (B, D)."""
    g = diag_scan(shift_next(a, reverse), go, None, not reverse)  # (B, T, D)
    da = g * shift_prev(h, h0, reverse)
    first = -1 if reverse else 0  # T >= 1 here: the public op handles empty sequences
    return da, g, a[:, first] * g[:, first]
