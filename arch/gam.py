"""Gated Associative Memory (GAM, 2025), the token mixer of the GAM block.

With x_hat = LN1(x) (the block's pre-norm), the mixer computes
    local  = CausalDepthwiseConv1d_k3(x_hat)              (kernel 3, with bias, no activation)
    global = softmax(x_hat M^T) M                          M: (n_slots, d) learned bank, xavier init,
                                                            used as both keys and values, no query projection
    [g_l, g_g] = x_hat W_g + b_g                           Linear(d -> 2d)
    fused = sigmoid(g_l) * local + sigmoid(g_g) * global
and the block adds it to the residual stream; the paper's FFN (Linear(4d) -> GELU -> Linear ->
Dropout) is the model's MLP (``mlp="gelu"``). There is no output projection.

The global path mixes no positions (each token retrieves from M independently); all token mixing
is the width-3 causal conv, so output t depends only on inputs t-2..t. Decoding state: the last
two inputs of the conv, {"conv_state": (B, d, kernel-1)}.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_mixer
from .state import check_mixer_input, check_state

__all__ = ["GatedAssociativeMemory"]


@register_mixer("gam")
class GatedAssociativeMemory(nn.Module):
    def __init__(self, d_model: int, n_slots: int = 512, kernel_size: int = 3, conv_bias: bool = True,
                 gate_bias: bool = True):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"GatedAssociativeMemory: kernel_size must be >= 1, got {kernel_size}")
        self.d_model, self.n_slots, self.kernel_size = d_model, n_slots, kernel_size
        # depthwise conv weight (d, 1, k) as nn.Conv1d would hold it
        self.conv1d = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, bias=conv_bias)
        self.memory = nn.Parameter(torch.empty(n_slots, d_model))
        self.gate_proj = nn.Linear(d_model, 2 * d_model, bias=gate_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.memory)
        self.conv1d.reset_parameters()

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        w = self.conv1d.weight
        return {"conv_state": torch.zeros(batch_size, self.d_model, self.kernel_size - 1,
                                          device=device or w.device, dtype=dtype or w.dtype)}

    def forward(self, x: torch.Tensor, state: dict | None = None):
        from parazoo.ops import causal_conv1d

        check_mixer_input("GatedAssociativeMemory", x, self.d_model)
        B, T, _ = x.shape
        if state is not None:
            check_state(state, batch_size=B, keys=("conv_state",), owner="GatedAssociativeMemory")
        xt = x.transpose(1, 2)  # (B, d, T)
        init = None if state is None else state["conv_state"].to(x.dtype)
        local, final = causal_conv1d(xt, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=None,
                                     initial_states=init, return_final_states=True)
        local = local.transpose(1, 2)  # (B, T, d)
        attn = torch.softmax(x @ self.memory.to(x.dtype).t(), dim=-1)  # (B, T, n_slots)
        glob = attn @ self.memory.to(x.dtype)  # (B, T, d)
        g_l, g_g = self.gate_proj(x).chunk(2, dim=-1)
        y = torch.sigmoid(g_l) * local + torch.sigmoid(g_g) * glob
        return y, {"conv_state": final}
