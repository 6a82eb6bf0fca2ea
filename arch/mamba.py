"""Mamba-1 block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", Fig. 3 and Algorithm 2), with mamba_ssm's parameter names and shapes so that a
``mamba_ssm.modules.mamba_simple.Mamba`` state_dict loads unchanged.

    x, z   = split(in_proj(u))                                (B, T, d_inner) each
    x      = silu(causal_depthwise_conv1d(x))                 width d_conv, with bias
    dt|B|C = split(x_proj(x))                                 (B, T, dt_rank) | (B, T, N) | (B, T, N)
    dt     = softplus(dt_proj(dt))                            (B, T, d_inner); bias inside softplus
    A      = -exp(A_log)                                      (d_inner, N), float32
    h_t    = exp(dt_t A) * h_{t-1} + dt_t B_t x_t             (per channel, h_t in R^N)
    y_t    = C_t . h_t + D x_t
    out    = out_proj(y * silu(z))

Initialisation (``reset_parameters``, as upstream): A_log = log(1..N) for every channel
(S4D-real), D = 1, dt_proj.weight ~ U(-dt_rank^-1/2, dt_rank^-1/2) ("random", dt_scale 1),
dt_proj.bias = softplus^-1(dt) with dt ~ log-uniform[dt_min, dt_max] floored at dt_init_floor.
A_log and D carry ``_no_weight_decay = True``, as upstream (parazoo.training.optim.param_groups
reads that attribute; A_log is 2-D, so without the flag it would be decayed). dt_proj.bias is
flagged too (1-D, never decayed anyway).

State (decoding): {"conv_state": (B, d_inner, d_conv), the last d_conv conv inputs (oldest
first), "ssm_state": (B, d_inner, N) in float32 (float64 for float64 models)}. A single token
steps both with ``causal_conv1d_update`` / ``selective_state_update``; a longer chunk from a
state is one ``causal_conv1d(initial_states=...)`` and one ``selective_scan(initial_state=...)``
call (differentiable through the state, at training speed).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_mixer
from .state import check_mixer_input, check_state, conv_window, mixer_packing, state_dtype, state_rows
from .time_major import linear_from_time_major, time_major_linear

__all__ = ["Mamba", "init_dt_bias"]


def init_dt_bias(bias: torch.Tensor, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
    """In place: bias = softplus^-1(dt), dt ~ log-uniform[dt_min, dt_max], floored at dt_init_floor
    (shared by Mamba and Mamba-2)."""
    with torch.no_grad():
        u = torch.rand(bias.shape, dtype=torch.float64, device=bias.device)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt) = dt + log(1 - exp(-dt))


@register_mixer("mamba")
class Mamba(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        di, N = self.d_inner, d_state
        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias)
        self.conv1d = nn.Conv1d(di, di, kernel_size=d_conv, groups=di, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * N, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        self.A_log = nn.Parameter(torch.empty(di, N))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, d_model, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Upstream's Mamba init of the SSM parameters (the projections keep the model's init)."""
        with torch.no_grad():
            std = self.dt_rank ** -0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            init_dt_bias(self.dt_proj.bias, self.dt_min, self.dt_max, self.dt_init_floor)
            A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # (d_inner, N)
            self.A_log.copy_(torch.log(A))
            self.D.fill_(1.0)
        for p in (self.A_log, self.D, self.dt_proj.bias):
            p._no_weight_decay = True

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return {"conv_state": torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
                "ssm_state": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=state_dtype(dtype))}

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, state: dict | None = None, *, seq_idx: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None):
        """x (B, T, d_model) -> y (B, T, d_model), new state (the input state is not modified).

        Packed sequences (keyword only; they never leak into each other): ``seq_idx`` (B, T) int,
        mamba_ssm's Mamba-2 convention: a state (one per row) applies to a row's tokens of sequence 0, the
        returned state is each row's last sequence's; or ``cu_seqlens`` (batch 1, flash-attn convention):
        states are per sequence, (n_seqs, ...) in and out (``arch/state.py``)."""
        check_mixer_input("Mamba", x, self.d_model)
        B, T, _ = x.shape
        packing = mixer_packing("Mamba", x, seq_idx, cu_seqlens)
        if state is not None:
            n, rows = state_rows(x, packing)
            check_state(state, batch_size=n, keys=("conv_state", "ssm_state"), owner="Mamba", rows=rows)
        if state is not None and T == 1 and not packing:
            y, new_state = self._step(x[:, 0], state)
            return y[:, None], new_state
        from parazoo.ops import causal_conv1d, selective_scan

        xz = time_major_linear(x, self.in_proj.weight)                        # (B, 2 d_inner, T), time-contiguous
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None]
        xs, z = xz.chunk(2, dim=1)                                            # (B, d_inner, T)
        w = self.conv1d.weight[:, 0]                                          # (d_inner, d_conv)
        prev = None if state is None else state["conv_state"].to(xs.dtype)
        init = None if prev is None else prev[:, :, 1:]                       # (B or n_seqs, d_inner, d_conv - 1)
        xc = causal_conv1d(xs, w, self.conv1d.bias, activation="silu", initial_states=init, **packing)
        dbc = self._from_time_major(self.x_proj, xc)                          # (B, T, dt_rank + 2N)
        dt_low, Bm, Cm = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = time_major_linear(dt_low, self.dt_proj.weight)                   # (B, d_inner, T), bias in the scan
        Bm, Cm = Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous()  # (B, N, T)
        A, D, dt_bias = self._ssm_params()
        h0 = None if state is None else state["ssm_state"]                   # (B or n_seqs, d_inner, N)
        y, last = selective_scan(xc, dt, A, Bm, Cm, D, z=z, delta_bias=dt_bias, delta_softplus=True,
                                 return_last_state=True, initial_state=h0,
                                 **packing)                                  # (B, d_inner, T), (B or n_seqs, d_inner, N)
        new_state = {"conv_state": conv_window(xs, prev, self.d_conv, **packing), "ssm_state": last}
        return self._from_time_major(self.out_proj, y), new_state

    @staticmethod
    def _from_time_major(proj: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """proj applied to h (B, C, T) viewed as (B, T, C). With batch > 1 a plain nn.Linear runs as one GEMM
        per batch row on h as it lies (F.linear would copy the transposed input first); batch 1 folds into
        a view and anything else (Hymba's Identity, an nn.Linear subclass or wrapper with its own forward)
        is called on the view. (At batch 1 the per-row path measured 5-7% slower per mamba step: its
        channel-last gradient lands differently in the accumulation with the scan's du.)"""
        if type(proj) is nn.Linear and h.shape[0] > 1:
            return linear_from_time_major(h, proj.weight, proj.bias)
        return proj(h.transpose(1, 2))

    def _ssm_params(self):
        """A = -exp(A_log) (d_inner, N), D, dt bias (d_inner,), in float32 (float64 for a float64 model)."""
        cd = state_dtype(self.A_log.dtype)
        return -torch.exp(self.A_log.to(cd)), self.D.to(cd), self.dt_proj.bias.to(cd)

    def _step(self, x: torch.Tensor, state: dict):
        """One token x (B, d_model) from ``state``; returns y (B, d_model) and the new state."""
        from parazoo.ops import causal_conv1d_update, selective_state_update

        xs, z = self.in_proj(x).chunk(2, dim=-1)                              # (B, d_inner)
        conv_state = state["conv_state"].to(xs.dtype).clone()                 # (B, d_inner, d_conv), updated in place
        xc = causal_conv1d_update(xs, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        dt_low, Bm, Cm = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt_low, self.dt_proj.weight)                            # (B, d_inner), bias in the update
        h = state["ssm_state"].clone()                                        # (B, d_inner, N), updated in place
        A, D, dt_bias = self._ssm_params()
        y = selective_state_update(h, xc, dt, A, Bm, Cm, D, z=z, dt_bias=dt_bias, dt_softplus=True)
        return self.out_proj(y), {"conv_state": conv_state, "ssm_state": h}
