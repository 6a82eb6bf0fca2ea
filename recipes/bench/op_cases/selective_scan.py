"""Benchmark cases of selective_scan (Mamba-1): one Mamba-130M layer, the same with d_state 64, and with
1000 channels (not a multiple of 16).

batch 1, dim (d_inner) 1536 (and 1000), d_state N 16 (and 64), L 2048, B/C ungrouped (batch, N, L), D, z gate,
delta_bias with softplus, A = -(1..N) (S4D-real init), delta_bias = inverse softplus of dt
log-uniform in [1e-3, 0.1] (quick mode: L 256). Goals on a 2-core CPU, float32: cpu forward at
least 30x faster than the sequential reference; cpu forward+backward at most 3x its forward.
Backend "cpu-rows": the cpu path with the channel-blocked kernels switched off (the per-row C kernels
that float32 ran for N != 16 before the blocked kernels took any N <= 256, and for channels not a
multiple of 16 per B/C group before the blocked kernels took them padded).
"""
from __future__ import annotations

import math

import torch

from . import OpCase


def _make(b, d, N, L):
    def make():
        g = torch.Generator().manual_seed(0)
        dt = torch.exp(torch.empty(d).uniform_(math.log(1e-3), math.log(0.1), generator=g)).clamp_min(1e-4)
        ins = {
            "u": torch.randn(b, d, L, generator=g),
            "delta": torch.randn(b, d, L, generator=g) * 0.5,
            "A": -torch.arange(1, N + 1, dtype=torch.float32).repeat(d, 1),
            "B": torch.randn(b, N, L, generator=g),
            "C": torch.randn(b, N, L, generator=g),
            "D": torch.ones(d),
            "z": torch.randn(b, d, L, generator=g),
            "delta_bias": dt + torch.log(-torch.expm1(-dt)),                     # inverse softplus
        }
        return {k: v.requires_grad_() for k, v in ins.items()}
    return make


def _run(x, backend):
    from parazoo.ops import selective_scan
    if backend == "cpu-rows":
        import importlib
        if x["u"].device.type != "cpu":
            raise ValueError("backend cpu-rows runs on CPU tensors only")
        importlib.import_module("parazoo.ops.selective_scan.cpu").USE_BLOCKED = False   # this process only
        backend = "cpu"
    return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"], delta_bias=x["delta_bias"],
                          delta_softplus=True, backend=backend)


_GOALS = {
    (1536, 16): "cpu fwd >= 30x the sequential reference; cpu fwd+bwd <= 3x cpu fwd (Mamba-130M layer)",
    (1536, 64): "d_state 64",
    (1000, 16): "dim not a multiple of 16 (the blocked kernels on channels padded to 1008)",
}


def cases(quick: bool) -> list[OpCase]:
    b, L = 1, (256 if quick else 2048)
    out = []
    for (d, N), goal in _GOALS.items():
        nbytes = 4 * (b * d * L * 4 + 2 * b * N * L)     # u, delta, z read, y written; B, C read (float32)
        out.append(OpCase(op="selective_scan", shape=f"b{b} dim{d} N{N} L{L}", make=_make(b, d, N, L), run=_run,
                          backends=("reference", "cpu", "cpu-rows", "triton"), slow_reference=True, copy_bytes=nbytes,
                          goal=goal))
    return out
