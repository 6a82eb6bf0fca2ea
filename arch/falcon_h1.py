"""Falcon-H1 hybrid-head mixer (TII 2025, "Falcon-H1: A Family of Hybrid-Head Language Models"):
a Mamba-2 branch and a GQA attention branch read the same pre-normed input in parallel, each
with its own output projection; their outputs are summed with muP multipliers.

    h     = the block's pre-norm output                                   (B, T, d_model)
    m     = Mamba2'(ssm_in_multiplier * h)                                (B, T, d_model)
            where Mamba2' scales its input projection per segment:
            z | x | B | C | dt = in_proj(.) * (m_z | m_x | m_B | m_C | m_dt)   (ssm_multipliers)
            widths d_ssm | d_ssm | G N | G N | H
    a     = Attn(attention_in_multiplier * h)                             (B, T, d_model)
            GQA with RoPE (rotate-half pairing, base rope_base), keys scaled by key_multiplier,
            softmax scale head_dim^-1/2
    y     = ssm_out_multiplier * m + attention_out_multiplier * a

The Mamba-2 branch is ``arch.mamba2.Mamba2`` (SSD scan, causal conv, decoding state); Falcon-H1
defaults to no gated RMSNorm inside it (``mamba_rmsnorm=False``: out = out_proj(y * silu(z))),
as transformers' FalconH1 (``mamba_rms_norm``); with it on, ``mamba_norm_before_gate`` picks
RMSNorm(y) * silu(z) or RMSNorm(y * silu(z)) over ``mamba_ngroups`` groups. The attention branch
is ``arch.attention.Attention``. The MLP multipliers (gate / down) and the embedding / lm-head
multipliers live at model level (ModelConfig.mlp_multipliers, embedding_multiplier,
logits_multiplier).

Parameter names follow transformers' FalconH1DecoderLayer: ``mamba.*`` (in_proj, conv1d, dt_bias,
A_log, D, norm, out_proj) and ``self_attn.*`` (q_proj, k_proj, v_proj, o_proj).

State: one flat dict, the Mamba-2 state {"conv_state", "ssm_state"} and the KV cache {"k", "v", "pos"}
side by side (flat, so that structures such as ParScale can learn per-stream initial states;
``learnable_prefix`` gives attention prefix keys/values plus a Mamba-2 initial state).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import Attention
from .mamba2 import Mamba2
from .registry import register_mixer
from .state import check_mixer_input, check_state, sub_state

_SSM_KEYS = ("conv_state", "ssm_state")   # the Mamba branch's state entries
_ATTN_KEYS = ("k", "v", "pos")             # the attention branch's KV cache

__all__ = ["FalconH1", "SegmentScaledLinear"]


class SegmentScaledLinear(nn.Linear):
    """nn.Linear whose output channels are multiplied by fixed per-segment scalars:
    y = (x W^T + b) * s, s = concat_i(m_i * ones(width_i)) (a non-persistent buffer)."""

    def __init__(self, linear: nn.Linear, widths: list[int], multipliers: list[float]):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        if len(widths) != len(multipliers) or sum(widths) != linear.out_features:
            raise ValueError(f"SegmentScaledLinear: {len(multipliers)} multipliers for segments {widths} "
                             f"of {linear.out_features} channels")
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        # built in float64 so that .double() models keep the exact multipliers (.float() rounds once)
        scale = torch.cat([torch.full((w,), float(m), dtype=torch.float64) for w, m in zip(widths, multipliers)])
        self.register_buffer("scale", scale, persistent=False)
        self.multipliers = [float(m) for m in multipliers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y * self.scale.to(y.dtype)


@register_mixer("falcon_h1")
class FalconH1(nn.Module):
    def __init__(self, d_model: int, n_heads: int | None = None, n_kv_heads: int | None = None,
                 head_dim: int | None = None, rope_base: float = 1e11, attention_bias: bool = False,
                 d_ssm: int | None = None, mamba_expand: int = 2, mamba_d_state: int = 128,
                 mamba_headdim: int = 64, mamba_ngroups: int = 1, mamba_d_conv: int = 4,
                 mamba_chunk_size: int = 128, mamba_rmsnorm: bool = False, mamba_norm_before_gate: bool = False,
                 mamba_conv_bias: bool = True, mamba_proj_bias: bool = False, projectors_bias: bool = False,
                 norm_eps: float = 1e-5, key_multiplier: float = 1.0, attention_in_multiplier: float = 1.0,
                 attention_out_multiplier: float = 1.0, ssm_in_multiplier: float = 1.0,
                 ssm_out_multiplier: float = 1.0, ssm_multipliers: tuple | list = (1.0, 1.0, 1.0, 1.0, 1.0)):
        super().__init__()
        if len(ssm_multipliers) != 5:
            raise ValueError(f"FalconH1: ssm_multipliers must hold 5 values (z, x, B, C, dt), got {ssm_multipliers!r}")
        self.d_model = d_model
        self.attention_in_multiplier, self.attention_out_multiplier = attention_in_multiplier, attention_out_multiplier
        self.ssm_in_multiplier, self.ssm_out_multiplier = ssm_in_multiplier, ssm_out_multiplier
        self.mamba = Mamba2(d_model, d_state=mamba_d_state, d_conv=mamba_d_conv, expand=mamba_expand,
                            headdim=mamba_headdim, ngroups=mamba_ngroups, chunk_size=mamba_chunk_size,
                            norm_eps=norm_eps, conv_bias=mamba_conv_bias, bias=mamba_proj_bias, d_ssm=d_ssm,
                            rmsnorm=mamba_rmsnorm, norm_before_gate=mamba_norm_before_gate,
                            out_bias=projectors_bias)
        m = self.mamba
        GN = m.ngroups * m.d_state
        self.mamba.in_proj = SegmentScaledLinear(m.in_proj, [m.d_inner, m.d_inner, GN, GN, m.nheads], list(ssm_multipliers))
        self.self_attn = Attention(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                                   rope_base=rope_base, bias=attention_bias, key_multiplier=key_multiplier)

    def reset_parameters(self) -> None:
        self.mamba.reset_parameters()

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {**self.mamba.init_state(batch_size, device=device, dtype=dtype),
                **self.self_attn.init_state(batch_size, device=device, dtype=dtype)}

    def learnable_prefix(self, n_streams: int, n_prefix: int) -> dict:
        """Template of a learned initial state (ParScale): attention prefix keys/values + an SSM state."""
        return {**self.mamba.init_state(n_streams, dtype=torch.float32), **self.self_attn.learnable_prefix(n_streams, n_prefix)}

    def forward(self, x: torch.Tensor, state: dict | None = None):
        """x (B, T, d_model) -> y (B, T, d_model), new state."""
        check_mixer_input("FalconH1", x, self.d_model)
        if state is not None:
            check_state(state, batch_size=x.shape[0], keys=_SSM_KEYS + _ATTN_KEYS, owner="FalconH1")
        ssm_in = x * self.ssm_in_multiplier if self.ssm_in_multiplier != 1.0 else x
        attn_in = x * self.attention_in_multiplier if self.attention_in_multiplier != 1.0 else x
        m, ssm_state = self.mamba(ssm_in, sub_state(state, _SSM_KEYS))
        a, attn_state = self.self_attn(attn_in, sub_state(state, _ATTN_KEYS))
        y = m * self.ssm_out_multiplier + a * self.attention_out_multiplier
        return y, {**ssm_state, **attn_state}
