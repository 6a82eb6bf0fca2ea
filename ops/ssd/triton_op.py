"""Glue of the Triton path of ssd_scan: packing, launches, elementwise pieces, custom op + autograd.

Forward (kernels in triton_fwd.py): dt' = softplus(dt + dt_bias) (torch, elementwise) -> chunk
cumsum -> chunk states -> state passing -> chunk output Y_ssm; then y = (Y_ssm + D x) * silu(z).

Backward (kernels in triton_bwd.py), with dY = dy * silu(z) the gradient of Y_ssm:
    dH_c^out = sum_i exp(s_i) dY_i C_i^T                         (chunk-state kernel, FROM_START)
    reverse state pass: dS_c = g_{c+1}; g_c = dH_c^out + exp(s_{Q-1}) g_{c+1}; g = d final at a
        sequence's last chunk, d initial at its first; ds_{Q-1} += exp(s_{Q-1}) <g_{c+1}, H_c>
    dx_j  = dt'_j (sum_{i>=j} exp(s_i - s_j)(C_i . B_j) dY_i + exp(s_{Q-1} - s_j) dS B_j)
    ddt'_j = x_j . (dx_j / dt'_j)           (computed without dividing)
    dC_i  = sum_{j<=i} exp(s_i - s_j) dt'_j (dY_i . x_j) B_j + exp(s_i) dY_i H_c   (summed over the group)
    dB_j  = sum_{i>=j} exp(s_i - s_j) dt'_j (dY_i . x_j) C_i + exp(s_{Q-1} - s_j) dt'_j dS^T x_j
    ds_i  = dY_i . Y_ssm_i - dt'_j ddt'_j [intra + state] + [i = Q-1](sum_j dt'_j x_j . dS B_j exp(..) + decay term)
    da = reverse cumsum of ds within the chunk; ddt' += A da; dA = sum da dt'.
The chunk size used by the kernels is max(chunk_size, 16) (tl.dot needs 16-wide tiles); the
chunk size never changes the result.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton

from .cpu import compute_dtype
from .layout import make_layout
from .reference import dt_preprocess
from .triton_bwd import _ssd_chunk_dbc_bwd, _ssd_chunk_dx_bwd, _ssd_state_pass_bwd
from .triton_fwd import _ssd_chunk_cumsum_fwd, _ssd_chunk_out_fwd, _ssd_chunk_state, _ssd_state_pass_fwd, row_tile

__all__ = ["ssd_scan_triton"]


# Largest row tile (positions of a chunk) and state tile (N), chosen so that the builds (8 warps,
# tf32x3 dots) do not spill at the Mamba-2 shape: the forward's row tile per target
# (triton_fwd.row_tile: 64 from sm_90 on, 32 before), at most MAX_BM; tests shrink MAX_BM and
# MAX_BN to run the multi-tile loops on small shapes. The backward's per-chunk kernels (dx, dB / dC)
# take rows in tiles of at most MAX_BM_BWD (64 spills on sm_80: dx 1260 B); the dB / dC kernel sums
# over P in slices of MAX_BP_DBC (a 32-wide slice spills on sm_80, all of P in one tile on sm_90 and
# sm_80). triton_fwd.AOT_SPECS and triton_bwd.AOT_SPECS compile the same sizes.
MAX_BM = 64
MAX_BN = 32
MAX_BM_BWD = 32
MAX_BP_DBC = 16


def _capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of a CUDA device; the interpreter (CPU tensors) takes sm_90's tiles."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


class _Plan:
    """Sizes and block shapes of one call."""

    def __init__(self, x, B, chunk_size, cu_seqlens):
        b, L, self.H, self.P = x.shape
        self.G, self.N = B.shape[2], B.shape[3]
        self.Q = max(chunk_size, 16)
        self.layout = make_layout(b, L, self.Q, cu_seqlens, x.device)
        self.S, self.Cs, self.Lp = self.layout.S, self.layout.Cs, self.layout.Lp
        self.cdt = compute_dtype(x.dtype)
        self.prec = "ieee" if self.cdt == torch.float64 else "tf32x3"
        self.BM = min(self.Q, MAX_BM, row_tile(_capability(x.device)))
        self.BP = _pow2(self.P)
        self.BN = min(_pow2(self.N), MAX_BN)
        self.BM_bwd = min(self.BM, MAX_BM_BWD)
        self.BP_dbc = min(self.BP, MAX_BP_DBC)
        self.BLOCK = min(1024, triton.next_power_of_2(self.P * self.N))
        self.warps = 8                                                            # matmul kernels
        self.scan_warps = 4                                                       # state passing
        self.stages = 2

    def pack(self, t, dtype=None):
        t = self.layout.pack(t if dtype is None else t.to(dtype))
        return t.contiguous()


def _prepare(plan, x, dtp, A, B, C):
    """Packed inputs and the chunk cumsum s: (S, H, Lp)."""
    xq, Bq, Cq = plan.pack(x), plan.pack(B), plan.pack(C)
    dtq = plan.pack(dtp, plan.cdt).transpose(1, 2).contiguous()                  # (S, H, Lp)
    acum = torch.empty_like(dtq)
    _ssd_chunk_cumsum_fwd[(plan.Cs, plan.S * plan.H)](dtq, A.contiguous(), acum, plan.H, plan.Lp, Q=plan.Q)
    return xq, Bq, Cq, dtq, acum


def _chunk_state(plan, X, Bm, dtq, acum, from_start):
    out = X.new_empty((plan.S, plan.Cs, plan.H, plan.P, plan.N), dtype=plan.cdt)
    grid = (triton.cdiv(plan.P, plan.BP) * triton.cdiv(plan.N, plan.BN), plan.S * plan.Cs, plan.H)
    _ssd_chunk_state[grid](X, Bm, dtq, acum, out, plan.H, plan.G, plan.Lp, plan.P, plan.N, Q=plan.Q, BK=plan.BM,
                           BP=plan.BP, BN=plan.BN, FROM_START=from_start, PREC=plan.prec,
                           num_warps=plan.warps, num_stages=plan.stages)
    return out


def _states(plan, xq, Bq, dtq, acum, init):
    """H_c entering each chunk (S, Cs, H, P, N) and the final states (n_seqs, H, P, N)."""
    states = _chunk_state(plan, xq, Bq, dtq, acum, False)
    hin = torch.empty_like(states)
    final = xq.new_empty((plan.layout.n_seqs, plan.H, plan.P, plan.N), dtype=plan.cdt)
    PN = plan.P * plan.N
    init_c = None if init is None else init.to(plan.cdt).contiguous()
    _ssd_state_pass_fwd[(triton.cdiv(PN, plan.BLOCK), plan.S, plan.H)](
        states, acum, init_c if init_c is not None else states, plan.layout.chunk_seq_bordered(), hin, final,
        plan.H, plan.Lp, PN, Q=plan.Q, BLOCK=plan.BLOCK, HAS_INIT=init_c is not None, num_warps=plan.scan_warps)
    return hin, final


def _d_term(D, x, cdt):
    return None if D is None else (D[:, None] if D.dim() == 1 else D).to(cdt) * x.to(cdt)


def _forward(x, dt, A, B, C, D, z, dt_bias, init, cu_seqlens, chunk_size, dt_softplus):
    plan = _Plan(x, B, chunk_size, cu_seqlens)
    dtp = dt_preprocess(dt.to(plan.cdt), None if dt_bias is None else dt_bias.to(plan.cdt), dt_softplus)
    xq, Bq, Cq, dtq, acum = _prepare(plan, x, dtp, A.to(plan.cdt), B, C)
    hin, final = _states(plan, xq, Bq, dtq, acum, init)
    yq = xq.new_empty((plan.S, plan.Lp, plan.H, plan.P), dtype=plan.cdt)
    grid = (triton.cdiv(plan.Q, plan.BM) * triton.cdiv(plan.P, plan.BP), plan.S * plan.Cs, plan.H)
    _ssd_chunk_out_fwd[grid](xq, Bq, Cq, dtq, acum, hin, yq, plan.H, plan.G, plan.Lp, plan.P, plan.N, Q=plan.Q,
                             BM=plan.BM, BP=plan.BP, BN=plan.BN, PREC=plan.prec, num_warps=plan.warps,
                             num_stages=plan.stages)
    y_ssm = plan.layout.unpack(yq)                                                # (b, L, H, P)
    y = y_ssm if D is None else y_ssm + _d_term(D, x, plan.cdt)
    if z is not None:
        y = y * F.silu(z.to(plan.cdt))
    y, y_ssm = y.to(x.dtype), y_ssm.contiguous()
    if y.data_ptr() == y_ssm.data_ptr():                                          # outputs may not alias
        y_ssm = y_ssm.clone()
    return y, final, y_ssm


def _backward(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, init, cu_seqlens, y_ssm, chunk_size, dt_softplus):
    plan = _Plan(x, B, chunk_size, cu_seqlens)
    cdt, lay = plan.cdt, plan.layout
    dy = dy.to(cdt)
    # elementwise tail: y = (Y_ssm + D x) * silu(z)
    y_pre = y_ssm if D is None else y_ssm + _d_term(D, x, cdt)
    dz = None
    if z is not None:
        zc = z.to(cdt)
        sz = torch.sigmoid(zc)
        dz = dy * y_pre * sz * (1 + zc * (1 - sz))
        dy = dy * zc * sz
    dD = None
    if D is not None:
        dD = (dy * x.to(cdt)).sum((0, 1))
        if D.dim() == 1:
            dD = dD.sum(-1)
    dt_in = dt.to(cdt) if dt_bias is None else dt.to(cdt) + dt_bias.to(cdt)
    dtp = F.softplus(dt_in) if dt_softplus else dt_in
    xq, Bq, Cq, dtq, acum = _prepare(plan, x, dtp, A.to(cdt), B, C)
    hin, _ = _states(plan, xq, Bq, dtq, acum, init)
    dyq = plan.pack(dy)                                                           # (S, Lp, H, P)
    S, Cs, Q, H, G, P, N, Lp = plan.S, plan.Cs, plan.Q, plan.H, plan.G, plan.P, plan.N, plan.Lp

    # reverse pass over chunk states
    dhout = _chunk_state(plan, dyq, Cq, dtq, acum, True)
    PN = P * N
    nblk = triton.cdiv(PN, plan.BLOCK)
    dstates = torch.empty_like(dhout)
    dinit = x.new_empty((lay.n_seqs, H, P, N), dtype=cdt)
    ddecay = x.new_empty((S, Cs, H, nblk), dtype=cdt)
    dfin = None if dfinal is None else dfinal.to(cdt).contiguous()
    _ssd_state_pass_bwd[(nblk, S, H)](dhout, hin, acum, dfin if dfin is not None else dhout,
                                      lay.chunk_seq_bordered(), dstates, dinit, ddecay, H, Lp, PN, Q=Q,
                                      BLOCK=plan.BLOCK, HAS_DFINAL=dfin is not None,
                                      num_warps=plan.scan_warps)

    # per-chunk gradients
    dxq = torch.empty_like(dyq)
    gdt = torch.empty_like(dtq)                                                   # x_j . dx_j / dt'_j
    gst = torch.empty_like(dtq)                                                   # x_j . (state part) / dt'_j
    nmb = triton.cdiv(Q, plan.BM_bwd)
    _ssd_chunk_dx_bwd[(nmb, S * Cs, H)](xq, Bq, Cq, dtq, acum, dyq, dstates, dxq, gdt, gst, H, G, Lp, P, N, Q=Q,
                                        BM=plan.BM_bwd, BP=plan.BP, BN=plan.BN, PREC=plan.prec,
                                        num_warps=plan.warps, num_stages=plan.stages)
    dBq = x.new_empty((S, Lp, G, N), dtype=cdt)
    dCq = torch.empty_like(dBq)
    grid = (triton.cdiv(Q, plan.BM_bwd) * triton.cdiv(N, plan.BN), S * Cs, G)
    for other, st, out, is_db in ((Cq, dstates, dBq, True), (Bq, hin, dCq, False)):
        _ssd_chunk_dbc_bwd[grid](xq, dyq, other, dtq, acum, st, out, H, G, Lp, P, N, Q=Q, BM=plan.BM_bwd,
                                 BP=plan.BP_dbc, BN=plan.BN, IS_DB=is_db, PREC=plan.prec, num_warps=plan.warps,
                                 num_stages=plan.stages)

    # ds -> da -> (ddt', dA), all O(L H) elementwise
    yq = plan.pack(y_ssm)
    ds = (dyq * yq).sum(-1).transpose(1, 2) - dtq * gdt                           # (S, H, Lp)
    ds = ds.reshape(S, H, Cs, Q)
    last = (dtq * gst).reshape(S, H, Cs, Q).sum(-1) + ddecay.sum(-1).permute(0, 2, 1)
    ds = torch.cat([ds[..., :-1], ds[..., -1:] + last[..., None]], -1)
    da = ds.flip(-1).cumsum(-1).flip(-1).reshape(S, H, Lp)
    ddtp = gdt + da * A.to(cdt)[:, None]
    dA = (da * dtq).sum((0, 2))
    ddtp = lay.unpack(ddtp.transpose(1, 2))                                       # (b, L, H)
    ddt, ddt_bias = ddtp, None
    if dt_softplus:
        ddt = ddtp * torch.sigmoid(dt_in)
    if dt_bias is not None:
        ddt_bias = ddt.sum((0, 1))
    dx = lay.unpack(dxq)
    if D is not None:
        dx = dx + _d_term(D, dy, cdt)
    cast = lambda g, ref: None if g is None or ref is None else g.to(ref.dtype)  # noqa: E731
    return (cast(dx, x), cast(ddt, dt), cast(dA, A), cast(lay.unpack(dBq), B), cast(lay.unpack(dCq), C),
            cast(dD, D), cast(dz, z), cast(ddt_bias, dt_bias), cast(dinit, init))


# ---- torch.library registration -------------------------------------------------------------

@torch.library.custom_op("parazoo::ssd_scan", mutates_args=())
def _ssd_scan_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                 initial_states: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], chunk_size: int,
                 dt_softplus: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus)


@_ssd_scan_op.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus):
    b, L, H, P = x.shape
    N = B.shape[-1]
    cdt = compute_dtype(x.dtype)
    n_seqs = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return x.new_empty(x.shape), x.new_empty((n_seqs, H, P, N), dtype=cdt), x.new_empty(x.shape, dtype=cdt)


@torch.library.custom_op("parazoo::ssd_scan_bwd", mutates_args=())
def _ssd_scan_bwd_op(dy: torch.Tensor, dfinal: Optional[torch.Tensor], x: torch.Tensor, dt: torch.Tensor,
                     A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                     z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                     initial_states: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
                     y_ssm: torch.Tensor, chunk_size: int, dt_softplus: bool) -> list[torch.Tensor]:
    grads = _backward(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens, y_ssm, chunk_size,
                      dt_softplus)
    return [g if g is not None else x.new_empty(0) for g in grads]


@_ssd_scan_bwd_op.register_fake
def _(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens, y_ssm, chunk_size, dt_softplus):
    ins = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    return [t.new_empty(t.shape) if t is not None else x.new_empty(0) for t in ins]


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, z, dt_bias, init, cu_seqlens, chunk_size, dt_softplus = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, init, cu_seqlens, output[2])
    ctx.chunk_size, ctx.dt_softplus = chunk_size, dt_softplus


def _autograd_backward(ctx, dy, dfinal, _dy_ssm):
    x, dt, A, B, C, D, z, dt_bias, init, cu_seqlens, y_ssm = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(x)
    grads = _ssd_scan_bwd_op(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, init, cu_seqlens, y_ssm, ctx.chunk_size,
                             ctx.dt_softplus)
    ins = (x, dt, A, B, C, D, z, dt_bias, init)
    grads = [g if t is not None else None for g, t in zip(grads, ins)]
    return (*grads, None, None, None)


_ssd_scan_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def ssd_scan_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, cu_seqlens):
    """Returns y (b, L, H, P) and final states (n_seqs, H, P, N)."""
    y, final, _ = _ssd_scan_op(x, dt, A, B, C, D, z, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus)
    return y, final

