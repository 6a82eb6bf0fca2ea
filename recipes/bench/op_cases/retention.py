"""Benchmark cases of the retention ops: chunk vs parallel vs fused-recurrent vs the reference.

Shape of the RetNet-style layer (fla's defaults at d_model 1024 with expand_v 2): B 1, T 2048,
H 8, K 64, V 128 (quick mode: T 256). Plus chunk_retention at the shape of parazoo's RetNet mixer
at d_model 768 (H 3, K 256, V 512, the chunk 128 it uses on CPU), T 8192 (quick: 1024), CPU only
(the training-speed case of ``parazoo bench mixers``).
"""
from __future__ import annotations

import torch

from . import OpCase


def _make(B, T, H, K, V):
    def make():
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, T, H, d, generator=g).requires_grad_() for d in (K, K, V))
        return {"q": q, "k": k, "v": v}
    return make


def _run_chunk(x, backend, chunk_size=64):
    from parazoo.ops import chunk_retention
    return chunk_retention(x["q"], x["k"], x["v"], chunk_size=chunk_size, backend=backend)


def _run_chunk_128(x, backend):
    return _run_chunk(x, backend, 128)


def _run_parallel(x, backend):
    from parazoo.ops import parallel_retention
    return parallel_retention(x["q"], x["k"], x["v"], backend=backend)


def _run_recurrent(x, backend):
    from parazoo.ops import fused_recurrent_retention
    return fused_recurrent_retention(x["q"], x["k"], x["v"], backend=backend)


def cases(quick: bool) -> list[OpCase]:
    B, T, H, K, V = 1, (256 if quick else 2048), 8, 64, 128
    shape = f"B{B} T{T} H{H} K{K} V{V}"
    nbytes = 4 * B * T * H * (2 * K + 2 * V)  # q, k, v read, o written (float32)
    return [
        OpCase(op=name, shape=shape, make=_make(B, T, H, K, V), run=run, slow_reference=True, copy_bytes=nbytes,
               goal=goal)
        for name, run, goal in (
            ("chunk_retention", _run_chunk, "training path: fastest of the three at long T"),
            ("parallel_retention", _run_parallel, "O(T^2) per head: competitive at short T only"),
            ("fused_recurrent_retention", _run_recurrent, "decoding path: one step at a time"),
        )
    ] + [_mixer_case(quick)]


def _mixer_case(quick: bool) -> OpCase:
    B, T, H, K, V = 1, (1024 if quick else 8192), 3, 256, 512
    return OpCase(op="chunk_retention", shape=f"B{B} T{T} H{H} K{K} V{V} C128", make=_make(B, T, H, K, V),
                  run=_run_chunk_128, backends=("cpu",), copy_bytes=4 * B * T * H * (2 * K + 2 * V),
                  goal="RetNet mixer at d_model 768 on CPU: the chunk loop at its own tile")
