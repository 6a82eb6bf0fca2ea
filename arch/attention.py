"""Causal multi-head / grouped-query attention, the baseline mixer (Vaswani et al. 2017;
GQA: Ainslie et al. 2023), on torch's scaled_dot_product_attention, with RoPE.

    q = rope(x W_q), k = rope(x W_k) * key_multiplier, v = x W_v     (B, T, H, D) / (B, T, H_kv, D)
    o_t = softmax(q_t K_{<=t}^T / sqrt(D)) V_{<=t};  y = concat_h(o) W_o
Each key/value head serves H / H_kv query heads.

State (the KV cache): {"k": (B, H_kv, S, D), "v": (B, H_kv, S, D), "pos": int} where ``pos`` is
the number of tokens consumed (the RoPE offset of the next token) and S >= pos is the cache
length; S > pos when the cache starts with unrotated prefix entries (ParScale's prefix keys and
values), which every query may attend to.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_mixer
from .rope import RotaryEmbedding
from .state import check_state

__all__ = ["Attention"]


@register_mixer("attention")
class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int | None = None, n_kv_heads: int | None = None,
                 head_dim: int | None = None, rope: bool = True, rope_base: float = 10000.0,
                 rope_interleaved: bool = False, bias: bool = False, out_bias: bool | None = None,
                 key_multiplier: float = 1.0, softmax_scale: float | None = None, dropout: float = 0.0):
        super().__init__()
        n_heads = n_heads or max(1, d_model // 64)
        n_kv_heads = n_kv_heads or n_heads
        if head_dim is None and d_model % n_heads:
            raise ValueError(f"Attention: d_model ({d_model}) must be divisible by n_heads ({n_heads}), or give head_dim")
        head_dim = head_dim or d_model // n_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"Attention: n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.key_multiplier = key_multiplier
        self.softmax_scale = softmax_scale if softmax_scale is not None else head_dim ** -0.5
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias if out_bias is None else out_bias)
        self.rope = RotaryEmbedding(head_dim, base=rope_base, interleaved=rope_interleaved) if rope else None

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        dtype = dtype or self.q_proj.weight.dtype
        device = device or self.q_proj.weight.device
        empty = torch.zeros(batch_size, self.n_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return {"k": empty, "v": empty.clone(), "pos": 0}

    def learnable_prefix(self, n_streams: int, n_prefix: int) -> dict:
        """Template of a learned prefix state (ParScale): n_prefix unrotated keys/values per stream."""
        z = torch.zeros(n_streams, self.n_kv_heads, n_prefix, self.head_dim, device=self.q_proj.weight.device)
        return {"k": z, "v": z.clone(), "pos": 0}

    def forward(self, x: torch.Tensor, state: dict | None = None):
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"Attention: argument 'x' must have shape (B, T, {self.d_model}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        if state is not None:
            check_state(state, batch_size=B, keys=("k", "v", "pos"), owner="Attention")
        pos = 0 if state is None else int(state["pos"])
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        if self.key_multiplier != 1.0:
            k = k * self.key_multiplier
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if state is not None:
            k = torch.cat([state["k"].to(k.dtype), k], dim=2)
            v = torch.cat([state["v"].to(v.dtype), v], dim=2)
        S = k.shape[2]
        new_state = {"k": k, "v": v, "pos": pos + T}
        rep = self.n_heads // self.n_kv_heads
        kk = k.repeat_interleave(rep, dim=1) if rep > 1 else k
        vv = v.repeat_interleave(rep, dim=1) if rep > 1 else v
        drop = self.dropout if self.training else 0.0
        if S == T:
            o = F.scaled_dot_product_attention(q, kk, vv, is_causal=T > 1, dropout_p=drop, scale=self.softmax_scale)
        else:
            # query i (absolute cache index S - T + i) sees cache entries j <= S - T + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, dropout_p=drop, scale=self.softmax_scale)
        o = o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(o), new_state
