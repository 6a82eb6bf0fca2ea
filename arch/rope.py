"""Rotary position embedding (Su et al. 2021), shared by attention, RetNet and the hybrids.

For a head vector x of size D and position n, pairs of channels (x_a, x_b) rotate by n * theta_i:
    (x_a, x_b) -> (x_a cos(n theta_i) - x_b sin(n theta_i), x_b cos(n theta_i) + x_a sin(n theta_i))
Pairing: ``interleaved=False`` pairs channel i with i + D/2 (Llama/GPT-NeoX, HF transformers);
``interleaved=True`` pairs 2i with 2i+1 (RoFormer, RetNet/torchscale).
Frequencies: ``freqs="power"``: theta_i = base^(-2i/D) (Llama); ``freqs="linspace"``:
theta = base^(-linspace(0, 1, D/2)) (RetNet, ANCHORS.md).
Only the first ``rotary_dim`` channels rotate (partial rotary); angles are computed in float32
(float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["RotaryEmbedding"]


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0, interleaved: bool = False, freqs: str = "power",
                 rotary_dim: int | None = None):
        super().__init__()
        rd = dim if rotary_dim is None else rotary_dim
        if rd % 2 or rd > dim:
            raise ValueError(f"RotaryEmbedding: rotary_dim must be even and <= dim={dim}, got {rd}")
        if freqs == "power":
            inv = base ** (-torch.arange(0, rd, 2, dtype=torch.float64) / rd)
        elif freqs == "linspace":
            inv = base ** (-torch.linspace(0, 1, rd // 2, dtype=torch.float64))
        else:
            raise ValueError(f"RotaryEmbedding: freqs must be 'power' or 'linspace', got {freqs!r}")
        self.dim, self.rotary_dim, self.interleaved = dim, rd, interleaved
        # kept in float64 outside the module's buffers so that .to(bfloat16) never rounds it
        self._inv_freq64 = inv
        self._cache: dict = {}

    def inv_freq(self, device, dtype) -> torch.Tensor:
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = self._inv_freq64.to(device=device, dtype=dtype)
        return self._cache[key]

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: (B, T, H, D) at positions offset .. offset+T-1. Returns the rotated x, same dtype."""
        T = x.shape[1]
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        pos = torch.arange(offset, offset + T, device=x.device, dtype=cdt)
        ang = pos[:, None] * self.inv_freq(x.device, cdt)[None, :]  # (T, rd/2)
        cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]  # (1, T, 1, rd/2)
        xr, xp = x[..., : self.rotary_dim].to(cdt), x[..., self.rotary_dim:]
        if self.interleaved:
            a, b = xr[..., 0::2], xr[..., 1::2]
            out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
        else:
            a, b = xr.chunk(2, dim=-1)
            out = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
        return torch.cat((out.to(x.dtype), xp), dim=-1) if xp.shape[-1] else out.to(x.dtype)
