"""Benchmark case of ssd_scan (Mamba-2 SSD): the Mamba-2 130M layer shape.

batch 1, H 24 heads, headdim P 64, d_state N 128, L 2048, G 1, chunk 256, D (H,), z gate,
dt_bias with softplus (quick mode: L 256). Goal: the chunked CPU path at least 10x faster than the
sequential reference (forward).
"""
from __future__ import annotations

import torch

from . import OpCase


def _make(b, L, H, P, G, N):
    def make():
        g = torch.Generator().manual_seed(0)
        A_log = torch.log(torch.empty(H).uniform_(1, 16, generator=g))        # A_init_range (1, 16)
        dt = torch.exp(torch.empty(H).uniform_(torch.log(torch.tensor(1e-3)).item(),
                                               torch.log(torch.tensor(0.1)).item(), generator=g))
        ins = {
            "x": torch.randn(b, L, H, P, generator=g),
            "dt": torch.randn(b, L, H, generator=g) * 0.5,
            "A": -torch.exp(A_log),
            "B": torch.randn(b, L, G, N, generator=g),
            "C": torch.randn(b, L, G, N, generator=g),
            "D": torch.ones(H),
            "z": torch.randn(b, L, H, P, generator=g),
            "dt_bias": dt + torch.log(-torch.expm1(-dt)),                       # inverse softplus
        }
        return {k: v.requires_grad_() for k, v in ins.items()}
    return make


def _run(x, backend):
    from parazoo.ops import ssd_scan
    return ssd_scan(x["x"], x["dt"], x["A"], x["B"], x["C"], 256, D=x["D"], z=x["z"], dt_bias=x["dt_bias"],
                    dt_softplus=True, backend=backend)


def cases(quick: bool) -> list[OpCase]:
    b, L, H, P, G, N = 1, (256 if quick else 2048), 24, 64, 1, 128
    nbytes = 4 * b * L * (3 * H * P + H + 2 * G * N)    # x, z, dt, B, C read; y written (float32)
    return [OpCase(op="ssd_scan", shape=f"b{b} L{L} H{H} P{P} N{N} G{G} chunk256", make=_make(b, L, H, P, G, N),
                   run=_run, slow_reference=True, copy_bytes=nbytes,
                   goal="cpu >= 10x faster than the sequential reference (Mamba-2 130M layer)")]
