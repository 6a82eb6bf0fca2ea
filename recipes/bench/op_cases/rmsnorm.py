"""Benchmark cases of rms_norm: a pre-norm RMSNorm of a 2048-wide model over 2048 tokens, and
Mamba-2's gated RMSNorm (d_inner 1536, z gate before the norm, 8 groups) over 2048 tokens
(quick mode: 256 tokens). Goal: memory-bound, a small multiple of one copy of x and y.
"""
from __future__ import annotations

import torch

from . import OpCase


def _make(T, D, gated):
    def make():
        g = torch.Generator().manual_seed(0)
        ins = {"x": torch.randn(1, T, D, generator=g).requires_grad_(),
               "weight": (1 + 0.1 * torch.randn(D, generator=g)).requires_grad_()}
        if gated:
            ins["z"] = torch.randn(1, T, D, generator=g).requires_grad_()
        return ins
    return make


def _run_plain(x, backend):
    from parazoo.ops import rms_norm
    return rms_norm(x["x"], x["weight"], eps=1e-5, backend=backend)


def _run_gated(x, backend):
    from parazoo.ops import rms_norm
    D = x["x"].shape[-1]
    return rms_norm(x["x"], x["weight"], eps=1e-5, z=x["z"], norm_before_gate=False, group_size=D // 8,
                    backend=backend)


def cases(quick: bool) -> list[OpCase]:
    T = 256 if quick else 2048
    return [
        OpCase(op="rms_norm", shape=f"T{T} D2048", make=_make(T, 2048, False), run=_run_plain,
               copy_bytes=4 * 2 * T * 2048, goal="memory-bound"),
        OpCase(op="rms_norm", shape=f"T{T} D1536 gated groups8", make=_make(T, 1536, True), run=_run_gated,
               copy_bytes=4 * 3 * T * 1536, goal="memory-bound"),
    ]
