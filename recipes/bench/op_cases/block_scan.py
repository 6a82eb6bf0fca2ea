"""Benchmark cases of block_scan (h_t = A_t @ h_{t-1} + b_t) at a ParaLSTM-like shape: B 8, T 4096
(quick mode: T 512), 256 channels with 2 x 2 blocks (state [c, h]), with h0. Goal: memory-bound,
a small multiple of one copy of A, b and h.
"""
from __future__ import annotations

import torch

from . import OpCase


def _make(B, T, D, K):
    def make():
        g = torch.Generator().manual_seed(0)
        return {
            "A": (torch.randn(B, T, D, K, K, generator=g) * (0.9 / K ** 0.5)).requires_grad_(),
            "b": torch.randn(B, T, D, K, generator=g).requires_grad_(),
            "h0": torch.randn(B, D, K, generator=g).requires_grad_(),
        }
    return make


def _run(x, backend):
    from parazoo.ops import block_scan
    return block_scan(x["A"], x["b"], x["h0"], backend=backend)


def cases(quick: bool) -> list[OpCase]:
    B, T, D, K = 8, (512 if quick else 4096), 256, 2
    return [OpCase(op="block_scan", shape=f"B{B} T{T} D{D} K{K}", make=_make(B, T, D, K), run=_run,
                   copy_bytes=4 * B * T * D * (K * K + 2 * K), slow_reference=True,
                   goal="memory-bound: a small multiple of one copy of A, b and h")]
