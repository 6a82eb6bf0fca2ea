"""Mamba-2 block (Dao & Gu 2024, "Transformers are SSMs", Sec. 7 / Fig. 6), with mamba_ssm's
``Mamba2`` parameter names and shapes (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj).

    z | xBC | dt = split(in_proj(u))          (B, T, d_inner) | (B, T, d_inner + 2 G N) | (B, T, H)
    xBC          = silu(causal_depthwise_conv1d(xBC))            width d_conv, with bias
    x | B | C    = split(xBC)                  x (B, T, H, P); B, C (B, T, G, N); head h reads group h // (H/G)
    dt           = softplus(dt + dt_bias)      (B, T, H)
    A            = -exp(A_log)                 (H,), one scalar decay per head
    h_t          = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        h_t: (H, P, N)
    y_t          = h_t C_t + D x_t                             (SSD, ``parazoo.ops.ssd_scan``)
    out          = out_proj(RMSNorm(y * silu(z)))              gated RMSNorm, norm_before_gate=False,
                                                               groups of d_inner / G channels
Options for hybrids (Falcon-H1): ``d_ssm`` sets d_inner directly; ``rmsnorm=False`` gives
out = out_proj(y * silu(z)); ``norm_before_gate=True`` gives RMSNorm(y) * silu(z).
Initialisation (``reset_parameters``, as upstream): A ~ U(A_init_range) per head, A_log = log A;
dt_bias = softplus^-1(dt), dt ~ log-uniform[dt_min, dt_max] floored at dt_init_floor (shared with
Mamba-1: ``init_dt_bias``); D = 1. A_log, D, dt_bias carry ``_no_weight_decay = True``.

State: {"conv_state": (B, d_inner + 2 G N, d_conv), the last d_conv conv inputs,
"ssm_state": (B, H, P, N) float32}. Multi-token chunks continue with ssd_scan(initial_states=...,
return_final_states=True); a single token steps with causal_conv1d_update and
selective_state_update on the (B, H*P, N) view of the state (channel h*P+p reads group h // (H/G)).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from parazoo.ops._cpu_transpose import transpose_copy

from .mamba import init_dt_bias
from .norms import GatedRMSNorm
from .registry import register_mixer
from .state import check_mixer_input, check_state, conv_window, mixer_packing, state_dtype, state_rows

__all__ = ["Mamba2"]


class _TransposeCopy(torch.autograd.Function):
    """t.transpose(1, 2).contiguous() whose gradient is also a contiguous transposing copy, both by
    ops/_cpu_transpose on CPU (2-3x faster than torch's copy of a transposed view)."""

    @staticmethod
    def forward(ctx, t):
        return transpose_copy(t)

    @staticmethod
    def backward(ctx, g):
        return transpose_copy(g)


@register_mixer("mamba2")
class Mamba2(nn.Module):
    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, A_init_range: tuple = (1, 16), dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, chunk_size: int = 256, norm_eps: float = 1e-5,
                 conv_bias: bool = True, bias: bool = False, d_ssm: int | None = None, rmsnorm: bool = True,
                 norm_before_gate: bool = False, out_bias: bool | None = None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model) if d_ssm is None else int(d_ssm)
        if self.d_inner % headdim:
            raise ValueError(f"Mamba2: d_inner = {'expand * d_model' if d_ssm is None else 'd_ssm'} = {self.d_inner} "
                             f"must be a multiple of headdim {headdim}")
        self.headdim, self.nheads, self.ngroups = headdim, self.d_inner // headdim, ngroups
        if self.nheads % ngroups:
            raise ValueError(f"Mamba2: ngroups {ngroups} must divide the number of heads {self.nheads}")
        self.A_init_range = tuple(A_init_range)
        self.dt_min, self.dt_max, self.dt_init_floor, self.chunk_size = dt_min, dt_max, dt_init_floor, chunk_size
        di, G, N, H = self.d_inner, ngroups, d_state, self.nheads
        self.conv_dim = di + 2 * G * N
        self.in_proj = nn.Linear(d_model, 2 * di + 2 * G * N + H, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.norm = GatedRMSNorm(di, eps=norm_eps, norm_before_gate=norm_before_gate, group_size=di // G) if rmsnorm else None
        self.out_proj = nn.Linear(di, d_model, bias=bias if out_bias is None else out_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            init_dt_bias(self.dt_bias, self.dt_min, self.dt_max, self.dt_init_floor)
            lo, hi = self.A_init_range
            self.A_log.copy_(torch.log(torch.empty(self.nheads, dtype=torch.float32).uniform_(lo, hi)))
            self.D.fill_(1.0)
            if self.norm is not None:
                self.norm.weight.fill_(1.0)
        for p in (self.A_log, self.D, self.dt_bias):
            p._no_weight_decay = True

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return {"conv_state": torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype),
                "ssm_state": torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                         dtype=state_dtype(dtype))}

    # ------------------------------------------------------------------ forward
    def _ssm_params(self):
        """A = -exp(A_log), D, dt_bias, each (H,), in float32 (float64 for a float64 model)."""
        cd = state_dtype(self.A_log.dtype)
        return -torch.exp(self.A_log.to(cd)), self.D.to(cd), self.dt_bias.to(cd)

    def _gate(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The output gate: gated RMSNorm (rmsnorm=True), or plain y * silu(z) (rmsnorm=False)."""
        return self.norm(y, z) if self.norm is not None else y * F.silu(z)

    def _split_in(self, zxbcdt: torch.Tensor):
        di, GN = self.d_inner, self.ngroups * self.d_state
        return zxbcdt.split([di, di + 2 * GN, self.nheads], dim=-1)          # z, xBC, dt

    def _split_xbc(self, xbc: torch.Tensor):
        di, GN = self.d_inner, self.ngroups * self.d_state
        return xbc.split([di, GN, GN], dim=-1)                               # x, B, C

    def forward(self, x: torch.Tensor, state: dict | None = None, *, seq_idx: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None):
        """x (B, T, d_model) -> y (B, T, d_model), new state (the input state is not modified).

        Packed sequences (keyword only; they never leak into each other): ``seq_idx`` (B, T) int, as
        mamba_ssm's Mamba2.forward takes it: a state (one per row) applies to a row's tokens of sequence 0,
        the returned state is each row's last sequence's; or ``cu_seqlens`` (batch 1, flash-attn
        convention): states are per sequence, (n_seqs, ...) in and out, as mamba_ssm's varlen prefill
        returns them (``arch/state.py``)."""
        check_mixer_input("Mamba2", x, self.d_model)
        Bsz, T, _ = x.shape
        packing = mixer_packing("Mamba2", x, seq_idx, cu_seqlens)
        if state is not None:
            n, rows = state_rows(x, packing)
            check_state(state, batch_size=n, keys=("conv_state", "ssm_state"), owner="Mamba2", rows=rows)
            if T == 1 and not packing:
                y, new_state = self._step(x[:, 0], state)
                return y[:, None], new_state
        from parazoo.ops import causal_conv1d, ssd_scan

        z, xbc, dt = self._split_in(self.in_proj(x))                           # (B, T, .)
        # Contiguous transposing copies around the conv (each one pass over xBC, forward and backward): the
        # CPU conv loops read rows of unit time stride (a channel-last view would be copied by torch, 2-3x
        # slower than these), and a transposed conv output would hand ssd_scan x, B, C with element stride T.
        xbc_t = _TransposeCopy.apply(xbc)                                     # (B, conv_dim, T)
        prev = None if state is None else state["conv_state"].to(xbc.dtype)
        init = None if prev is None else prev[:, :, 1:]                       # (B or n_seqs, conv_dim, d_conv - 1)
        xc = causal_conv1d(xbc_t, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu",
                           initial_states=init, **packing)
        xc = _TransposeCopy.apply(xc)                                         # (B, T, conv_dim)
        xs, Bm, Cm = self._split_xbc(xc)
        H, P, G, N = self.nheads, self.headdim, self.ngroups, self.d_state
        A, D, dt_bias = self._ssm_params()
        y, last = ssd_scan(xs.reshape(Bsz, T, H, P), dt, A, Bm.reshape(Bsz, T, G, N), Cm.reshape(Bsz, T, G, N),
                           self.chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True,
                           initial_states=None if state is None else state["ssm_state"],
                           return_final_states=True, **packing)   # (B, T, H, P), (B or n_seqs, H, P, N)
        y = self._gate(y.reshape(Bsz, T, self.d_inner), z)
        return self.out_proj(y), {"conv_state": conv_window(xbc_t, prev, self.d_conv, **packing), "ssm_state": last}

    def _step(self, x: torch.Tensor, state: dict):
        """One token x (B, d_model) from ``state``; returns y (B, d_model) and the new state."""
        from parazoo.ops import causal_conv1d_update, selective_state_update

        Bsz = x.shape[0]
        H, P, G, N = self.nheads, self.headdim, self.ngroups, self.d_state
        z, xbc, dt = self._split_in(self.in_proj(x))                           # (B, .)
        conv_state = state["conv_state"].to(xbc.dtype).clone()                # updated in place
        xc = causal_conv1d_update(xbc, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        xs, Bm, Cm = self._split_xbc(xc)                                      # (B, d_inner), (B, G N) x2
        h = state["ssm_state"].clone(memory_format=torch.contiguous_format)   # (B, H, P, N), updated in place
        A, D, dt_bias = (v.repeat_interleave(P, dim=-1) for v in self._ssm_params())  # (H,) -> (H*P,)
        y = selective_state_update(h.view(Bsz, H * P, N), xs, dt.repeat_interleave(P, dim=-1),
                                   A[:, None].expand(H * P, N), Bm.reshape(Bsz, G, N), Cm.reshape(Bsz, G, N),
                                   D=D, dt_bias=dt_bias, dt_softplus=True)   # (B, d_inner)
        y = self._gate(y, z)
        return self.out_proj(y), {"conv_state": conv_state, "ssm_state": h}
