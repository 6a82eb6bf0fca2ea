"""Multi-scale retention, the RetNet mixer (Sun et al. 2023, "Retentive Network", Sec. 2).

    Q = rope(X W_Q),  K = rope(X W_K),  V = X W_V          (B, T, H, K) / (B, T, H, K) / (B, T, H, V)
    rope: interleaved pairs (2i, 2i+1), theta_i = 10000^-linspace(0, 1, K/2), position n
    gamma_h = 1 - 2^(-5-h),  h = 0..H-1                     (fixed, not learned)
    recurrent:  S_n = gamma S_{n-1} + k_n^T v_n,  o_n = (K^-1/2 q_n) S_n
    parallel:   O = ((K^-1/2 Q) K^T * D) V,  D_nm = gamma^(n-m) for n >= m else 0
    chunkwise:  R_i = K_[i]^T (V_[i] * gamma^(B-1-j)) + gamma^B R_{i-1}
                O_[i] = (Q_[i] K_[i]^T * D) V_[i] + (Q_[i] * gamma^(j+1)) R_{i-1}
    Y   = RMSNorm_head(O) * swish(X W_G)                    per-head RMSNorm, fused with the gate
    MSR = Y W_O

The paper scales keys by K^-1/2; the ops (as fla) scale queries by the same factor, which gives
the same O. The paper normalises each head with GroupNorm; we follow fla (and torchscale's later
code) with a per-head RMSNorm fused with the swish gate (``GatedRMSNorm``, norm_before_gate=True,
group_size = head_v_dim), without affine weight by default (``norm_affine=True`` adds fla's).
Value heads are ``expand_v`` (2) times wider than query/key heads (paper Sec. 4.1: W_V, W_G are
d x 2d, W_O is 2d x d, so retention has 8 d^2 parameters). Default head_dim_k = 256 (torchscale's
RetNet configs: 512/2, 1024/4, 2048/8 heads).

``forward(x, state=None, mode=None)``: mode "parallel" | "chunk" | "recurrent" compute the same y;
None picks recurrent for T = 1, parallel for T <= chunk_size (64 when chunk_size is None), chunk
otherwise: the chunk form's cost grows linearly in T, the parallel form's quadratically, so long
sequences (training at T = 2k..8k) always take the chunk form.
``chunk_size`` is the chunk form's tile; None (default) picks it by device: 64 on CUDA (the Triton
kernels' tile, fla's default), 128 on CPU (the CPU chunk loop at the paper's head sizes K 256,
V 512, T 8192, one thread, forward+backward: 1.3 s at 128 vs 1.8 s at 64 and 1.7 s at 256). Any
tile gives the same y; an int is used as given on every device.
State: {"state": (B, H, K, V) float32 retention state S, "pos": int RoPE position of the next token}.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .norms import GatedRMSNorm
from .registry import register_mixer
from .rope import RotaryEmbedding
from .state import check_mixer_input, check_state, state_dtype

__all__ = ["MultiScaleRetention"]

MODES = ("parallel", "chunk", "recurrent")


@register_mixer("retnet")
class MultiScaleRetention(nn.Module):
    def __init__(self, d_model: int, n_heads: int | None = None, expand_k: float = 1.0, expand_v: float = 2.0,
                 rope_base: float = 10000.0, norm_eps: float = 1e-5, norm_affine: bool = False,
                 chunk_size: int | None = None, bias: bool = False):
        super().__init__()
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        n_heads = n_heads or max(1, key_dim // 256)
        if key_dim % n_heads or value_dim % n_heads:
            raise ValueError(f"MultiScaleRetention: n_heads {n_heads} must divide key_dim {key_dim} and value_dim {value_dim}")
        self.d_model, self.n_heads, self.key_dim, self.value_dim = d_model, n_heads, key_dim, value_dim
        self.head_k_dim, self.head_v_dim = key_dim // n_heads, value_dim // n_heads
        if self.head_k_dim % 2:
            raise ValueError(f"MultiScaleRetention: head_k_dim {self.head_k_dim} must be even for RoPE")
        if chunk_size is not None and (chunk_size < 1 or chunk_size & (chunk_size - 1)):
            raise ValueError(f"MultiScaleRetention: chunk_size must be a power of two, got {chunk_size}")
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(d_model, key_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, key_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, value_dim, bias=bias)
        self.g_proj = nn.Linear(d_model, value_dim, bias=bias)
        self.o_proj = nn.Linear(value_dim, d_model, bias=bias)
        self.g_norm = GatedRMSNorm(value_dim, eps=norm_eps, norm_before_gate=True, group_size=self.head_v_dim,
                                   elementwise_affine=norm_affine)
        self.rope = RotaryEmbedding(self.head_k_dim, base=rope_base, interleaved=True, freqs="linspace")

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        device = device or self.q_proj.weight.device
        dtype = state_dtype(dtype or self.q_proj.weight.dtype)
        return {"state": torch.zeros(batch_size, self.n_heads, self.head_k_dim, self.head_v_dim, device=device,
                                     dtype=dtype), "pos": 0}

    def pick_mode(self, T: int) -> str:
        return "recurrent" if T == 1 else ("parallel" if T <= (self.chunk_size or 64) else "chunk")

    def chunk_for(self, device) -> int:
        """The chunk form's tile on this device: chunk_size, or when None 128 on CPU and 64 elsewhere."""
        if self.chunk_size is not None:
            return self.chunk_size
        return 128 if torch.device(device).type == "cpu" else 64

    def forward(self, x: torch.Tensor, state: dict | None = None, mode: str | None = None):
        """x (B, T, d_model) -> y (B, T, d_model), new state."""
        check_mixer_input("MultiScaleRetention", x, self.d_model)
        if mode is not None and mode not in MODES:
            raise ValueError(f"MultiScaleRetention: argument 'mode' must be one of {MODES} or None, got {mode!r}")
        B, T, _ = x.shape
        if state is not None:
            check_state(state, batch_size=B, keys=("state", "pos"), owner="MultiScaleRetention")
        pos = 0 if state is None else int(state["pos"])
        S0 = None if state is None else state["state"]
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        q = self.rope(self.q_proj(x).view(B, T, H, K), pos)                    # (B, T, H, K)
        k = self.rope(self.k_proj(x).view(B, T, H, K), pos)                    # (B, T, H, K)
        v = self.v_proj(x).view(B, T, H, V)                                    # (B, T, H, V)
        if q.dtype != v.dtype:                                                 # RoPE computes in float32 under autocast
            q, k = q.to(v.dtype), k.to(v.dtype)
        o, S = self._retention(q, k, v, S0, mode or self.pick_mode(T))       # (B, T, H, V), (B, H, K, V)
        y = self.g_norm(o.reshape(B, T, self.value_dim), self.g_proj(x))
        return self.o_proj(y), {"state": S, "pos": pos + T}

    def _retention(self, q, k, v, S0, mode):
        from parazoo.ops import chunk_retention, fused_recurrent_retention, parallel_retention

        if S0 is not None and S0.dtype != state_dtype(q.dtype):
            S0 = S0.to(state_dtype(q.dtype))
        if mode == "recurrent":
            return fused_recurrent_retention(q, k, v, initial_state=S0, output_final_state=True)
        if mode == "chunk":
            return chunk_retention(q, k, v, initial_state=S0, output_final_state=True,
                                   chunk_size=self.chunk_for(q.device))
        o, _ = parallel_retention(q, k, v)
        return self._parallel_boundary(q, k, v, o, S0)

    @staticmethod
    def _parallel_boundary(q, k, v, o, S0):
        """The state terms the parallel form leaves out (the chunkwise form with one chunk of T):
        o_t += K^-1/2 gamma^(t+1) q_t S0;   S_T = gamma^T S0 + sum_t gamma^(T-1-t) k_t^T v_t."""
        from parazoo.ops.retention.common import log_decay

        B, T, H, K = q.shape
        acc = state_dtype(q.dtype)
        lg = log_decay(H, q.device, acc)                                        # (H,) log gamma_h
        t = torch.arange(T, device=q.device, dtype=acc)
        k_w = k.to(acc) * torch.exp((T - 1 - t)[:, None] * lg)[None, :, :, None]  # (B, T, H, K)
        S = torch.einsum("bthk,bthv->bhkv", k_w, v.to(acc))                    # (B, H, K, V)
        if S0 is not None:
            S = S + torch.exp(T * lg)[None, :, None, None] * S0
            q_w = q.to(acc) * (K ** -0.5) * torch.exp((t + 1)[:, None] * lg)[None, :, :, None]
            o = (o.to(acc) + torch.einsum("bthk,bhkv->bthv", q_w, S0)).to(o.dtype)
        return o, S
