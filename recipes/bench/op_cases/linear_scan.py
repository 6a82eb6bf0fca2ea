"""Benchmark cases of linear_scan (h_t = a_t * h_{t-1} + b_t): B 8, T 4096, D 1024 (quick mode:
T 512), with h0, forward and reverse. Goal: within 3x of one memory copy of the inputs and the
output (a, b read, h written) on the fused C path and on Triton.
"""
from __future__ import annotations

import torch

from . import OpCase


def _make(B, T, D):
    def make():
        g = torch.Generator().manual_seed(0)
        return {
            "a": (0.5 + 0.5 * torch.rand(B, T, D, generator=g)).requires_grad_(),
            "b": torch.randn(B, T, D, generator=g).requires_grad_(),
            "h0": torch.randn(B, D, generator=g).requires_grad_(),
        }
    return make


def _run(reverse):
    def run(x, backend):
        from parazoo.ops import linear_scan
        return linear_scan(x["a"], x["b"], x["h0"], reverse=reverse, backend=backend)
    return run


def cases(quick: bool) -> list[OpCase]:
    B, T, D = 8, (512 if quick else 4096), 1024
    copy = 4 * 3 * B * T * D  # float32 a, b read + h written
    return [
        OpCase(op="linear_scan", shape=f"B{B} T{T} D{D}" + (" reverse" if rev else ""), make=_make(B, T, D),
               run=_run(rev), copy_bytes=copy, slow_reference=True,
               goal="within 3x of one memory copy of inputs and output")
        for rev in (False, True)
    ]
