"""Benchmark cases of causal_conv1d: the Mamba-130M layer shape (d_inner 1536, d_conv 4, bias,
SiLU), batch 1, L 2048 (quick mode: L 256), plus one decode step with causal_conv1d_update.
Goal: the CPU path (fused C loops) at memory speed (a small multiple of one copy of x and y) and far
ahead of the direct-sum reference; Triton comparable to causal_conv1d's CUDA kernel on GPU.
"""
from __future__ import annotations

import torch

from . import OpCase


def _make(B, D, L, W):
    def make():
        g = torch.Generator().manual_seed(0)
        return {
            "x": torch.randn(B, D, L, generator=g).requires_grad_(),
            "weight": (torch.randn(D, W, generator=g) / W ** 0.5).requires_grad_(),
            "bias": torch.randn(D, generator=g).requires_grad_(),
        }
    return make


def _run(x, backend):
    from parazoo.ops import causal_conv1d
    return causal_conv1d(x["x"], x["weight"], x["bias"], "silu", backend=backend)


def _make_step(B, D, W):
    def make():
        g = torch.Generator().manual_seed(0)
        return {"x": torch.randn(B, D, generator=g), "conv_state": torch.randn(B, D, W, generator=g),
                "weight": torch.randn(D, W, generator=g), "bias": torch.randn(D, generator=g)}
    return make


def _run_step(x, backend):
    from parazoo.ops import causal_conv1d_update
    return causal_conv1d_update(x["x"], x["conv_state"], x["weight"], x["bias"], "silu", backend=backend)


def cases(quick: bool) -> list[OpCase]:
    B, D, W, L = 1, 1536, 4, (256 if quick else 2048)
    return [
        OpCase(op="causal_conv1d", shape=f"B{B} D{D} W{W} L{L} silu", make=_make(B, D, L, W), run=_run,
               copy_bytes=4 * 2 * B * D * L, goal="memory-bound: a few copies of x at most"),
        OpCase(op="causal_conv1d_update", shape=f"B{B} D{D} W{W} one step", make=_make_step(B, D, W), run=_run_step,
               grad=False, goal="decode latency"),
    ]
