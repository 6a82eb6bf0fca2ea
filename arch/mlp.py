"""Channel MLPs of the block.

SwiGLU (Shazeer 2020): y = W_2 (silu(W_1 x) * W_3 x), hidden default 8/3 d rounded up to 64;
with muP multipliers (Falcon-H1): y = m_down * W_2 (silu(m_gate * W_1 x) * W_3 x).
GELU MLP (GPT-2 / GAM's FFN): y = W_2 gelu(W_1 x), hidden default 4 d.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SwiGLU", "GeluMLP", "build_mlp", "default_d_ff"]


def default_d_ff(kind: str, d_model: int, multiple_of: int = 64) -> int:
    if kind == "swiglu":
        h = int(8 * d_model / 3)
        return multiple_of * ((h + multiple_of - 1) // multiple_of)
    return 4 * d_model


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool = False, multipliers: tuple | list | None = None):
        super().__init__()
        self.gate_multiplier, self.down_multiplier = (1.0, 1.0) if multipliers is None else map(float, multipliers)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate_proj(x)
        if self.gate_multiplier != 1.0:
            g = g * self.gate_multiplier
        y = self.down_proj(F.silu(g) * self.up_proj(x))
        return y * self.down_multiplier if self.down_multiplier != 1.0 else y


class GeluMLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def build_mlp(kind: str, d_model: int, d_ff: int | None, bias: bool, multipliers: tuple | list | None = None):
    """kind 'swiglu' | 'gelu' | 'none' (None returned: the block is mixer-only, as in Mamba's LM);
    multipliers (gate, down): SwiGLU's muP scalars (Falcon-H1), None = off."""
    if multipliers is not None and kind != "swiglu":
        raise ValueError(f"mlp_multipliers (gate, down) apply to mlp='swiglu' only, got mlp={kind!r}")
    if kind == "none":
        return None
    d_ff = d_ff or default_d_ff(kind, d_model)
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff, bias, multipliers)
    if kind == "gelu":
        return GeluMLP(d_model, d_ff, bias)
    raise ValueError(f"mlp must be 'swiglu', 'gelu' or 'none', got {kind!r}")
