"""Hymba hybrid-head mixer (Dong et al., NVIDIA 2024, "Hymba: A Hybrid-head Architecture for
Small Language Models", Sec. 2.1 / Eq. 1-3): attention heads and SSM heads read the same input in
parallel; each branch's output is normalised with its own learnable per-channel scale, the two
are averaged, then one output projection:

    a   = Attn(x)        GQA with RoPE, no output projection                 (B, T, d_inner)
    s   = Mamba(x)       Mamba-1 selective scan, y * silu(z), no out_proj    (B, T, d_inner)
    y   = out_proj((RMSNorm_1(a) + RMSNorm_2(s)) / 2)                        (B, T, d_model)

(the paper writes beta_1 * norm(attn) + beta_2 * norm(ssm) with learnable vectors beta; the
per-channel RMSNorm weights are those betas, and the 1/2 is the average of ANCHORS.md.)
The branches are ``arch.attention.Attention`` (its o_proj replaced by the identity) and
``arch.mamba.Mamba`` (its out_proj replaced by the identity), so both keep their own decoding
state; attention's heads span d_inner = expand * d_model channels (n_heads * head_dim = d_inner).

Meta tokens (the paper's learnable prefix, 128 in Hymba-1.5B) are a property of the model:
``ModelConfig.n_meta_tokens`` (arch/model.py prepends them at the start of a sequence).

Simplification: every attention head here is global. The paper uses sliding-window attention
in most layers (global in the first, middle and last) and shares KV caches between adjacent
layers; neither is implemented (a window would only shrink the KV cache, not change the
contract).

State: one flat dict, the KV cache {"k", "v", "pos"} and the Mamba state {"conv_state", "ssm_state"}
side by side (flat, so that structures such as ParScale can learn per-stream initial states).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import Attention
from .mamba import Mamba
from .norms import RMSNorm
from .registry import register_mixer
from .state import check_mixer_input, check_state, sub_state

_SSM_KEYS = ("conv_state", "ssm_state")   # the Mamba branch's state entries
_ATTN_KEYS = ("k", "v", "pos")             # the attention branch's KV cache

__all__ = ["Hymba"]


@register_mixer("hymba")
class Hymba(nn.Module):
    def __init__(self, d_model: int, n_heads: int | None = None, n_kv_heads: int | None = None,
                 expand: int = 2, d_state: int = 16, d_conv: int = 4, dt_rank: int | str = "auto",
                 rope_base: float = 10000.0, attention_bias: bool = False, norm_eps: float = 1e-6):
        super().__init__()
        self.d_model = d_model
        self.d_inner = int(expand * d_model)
        n_heads = n_heads or max(1, d_model // 64)
        if self.d_inner % n_heads:
            raise ValueError(f"Hymba: n_heads ({n_heads}) must divide d_inner = expand * d_model = {self.d_inner}")
        self.attn = Attention(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=self.d_inner // n_heads,
                              rope_base=rope_base, bias=attention_bias)
        self.attn.o_proj = nn.Identity()                     # the branch ends at the heads: (B, T, d_inner)
        self.ssm = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank)
        self.ssm.out_proj = nn.Identity()                    # y * silu(z): (B, T, d_inner)
        self.norm_attn = RMSNorm(self.d_inner, eps=norm_eps)
        self.norm_ssm = RMSNorm(self.d_inner, eps=norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def reset_parameters(self) -> None:
        self.ssm.reset_parameters()

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {**self.ssm.init_state(batch_size, device=device, dtype=dtype),
                **self.attn.init_state(batch_size, device=device, dtype=dtype)}

    def learnable_prefix(self, n_streams: int, n_prefix: int) -> dict:
        """Template of a learned initial state (ParScale): attention prefix keys/values + an SSM state."""
        return {**self.ssm.init_state(n_streams, dtype=torch.float32), **self.attn.learnable_prefix(n_streams, n_prefix)}

    def forward(self, x: torch.Tensor, state: dict | None = None):
        """x (B, T, d_model) -> y (B, T, d_model), new state."""
        check_mixer_input("Hymba", x, self.d_model)
        if state is not None:
            check_state(state, batch_size=x.shape[0], keys=_SSM_KEYS + _ATTN_KEYS, owner="Hymba")
        a, attn_state = self.attn(x, sub_state(state, _ATTN_KEYS))   # (B, T, d_inner)
        s, ssm_state = self.ssm(x, sub_state(state, _SSM_KEYS))      # (B, T, d_inner)
        y = self.out_proj((self.norm_attn(a) + self.norm_ssm(s)) * 0.5)
        return y, {**ssm_state, **attn_state}
