"""Sequential reference of Mamba-1's selective scan (Gu & Dao 2023, Algorithm 2 / Eq. 2a-2b).

For every batch row b and channel d (state h in R^N, h_{-1} = initial_state[b, d] or 0):

    delta'_t = softplus(delta_t + delta_bias)   if delta_softplus else   delta_t + delta_bias
    h_t      = exp(delta'_t * A) * h_{t-1} + delta'_t * B_t * u_t        (ZOH for A, Euler for B)
    y_t      = C_t . h_t + D * u_t
    y_t      = y_t * silu(z_t)                                            if z is given

Layouts (mamba_ssm's selective_scan_fn): u, delta, z (batch, dim, L); A (dim, N); B, C
(batch, N, L) or (batch, G, N, L) with channel d reading group d // (dim // G); D, delta_bias
(dim,). ``cu_seqlens`` (batch 1, [0, l1, l1+l2, ..., L]) restarts h at every sequence start, from
initial_state[i] (then (n_seqs, dim, N)) for sequence i, or from 0.

This is the ground truth for the tests: a plain loop over time, computed in float64 when any
input is float64 and float32 otherwise, differentiable by autograd. It is slow on purpose.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_reference", "selective_state_update_reference"]


def _compute_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _per_channel(X: torch.Tensor, dim: int, grouped: bool) -> torch.Tensor:
    """(batch, N, *) or, when grouped, (batch, G, N, *) -> (batch, dim, N, *): channel d reads group d // (dim // G)."""
    if not grouped:
        return X.unsqueeze(1).expand(X.shape[0], dim, *X.shape[1:])
    return X.repeat_interleave(dim // X.shape[1], dim=1)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False, cu_seqlens=None, *, initial_state=None):
    """y (batch, dim, L) in u's dtype [, last_state (batch or n_seqs, dim, N) in the compute dtype].

    ``initial_state`` is h_{-1}: (batch, dim, N), or (n_seqs, dim, N) with cu_seqlens (one per sequence)."""
    dt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, L = u.shape
    N = A.shape[1]
    u_, delta_ = u.to(dt), delta.to(dt)                       # (b, d, L)
    A_ = A.to(dt)                                             # (d, N)
    B_ = _per_channel(B.to(dt), dim, B.dim() == 4)            # (b, d, N, L)
    C_ = _per_channel(C.to(dt), dim, C.dim() == 4)
    if delta_bias is not None:
        delta_ = delta_ + delta_bias.to(dt)[:, None]
    if delta_softplus:
        delta_ = F.softplus(delta_)
    zero = u_.new_zeros(batch, dim, N)
    if cu_seqlens is None:
        n_seqs, starts, ends = 1, {0: 0}, {L - 1: 0}
        inits = [zero if initial_state is None else initial_state.to(dt)]
    else:
        cs = [int(v) for v in cu_seqlens.tolist()]
        n_seqs = len(cs) - 1
        starts = {cs[i]: i for i in range(n_seqs) if cs[i] < cs[i + 1]}
        ends = {cs[i + 1] - 1: i for i in range(n_seqs) if cs[i] < cs[i + 1]}
        inits = [zero if initial_state is None else initial_state[i:i + 1].to(dt) for i in range(n_seqs)]
    h = zero                                                  # (b, d, N)
    last = list(inits)                                        # an empty sequence's last state is its initial one
    ys = []
    # per-step views by unbind (its backward stacks the L gradients once; indexing [..., t] would
    # build a full-size gradient per step, quadratic in L)
    dls, Bs, Cs, us = delta_.unbind(-1), B_.unbind(-1), C_.unbind(-1), u_.unbind(-1)
    for t in range(L):
        if t in starts:
            h = inits[starts[t]]
        dl = dls[t][..., None]                                # (b, d, 1)
        h = torch.exp(dl * A_) * h + dl * Bs[t] * us[t][..., None]
        ys.append((h * Cs[t]).sum(-1))                        # (b, d)
        if t in ends:
            last[ends[t]] = h
    y = torch.stack(ys, dim=-1) if ys else u_.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(dt)[:, None] * u_
    if z is not None:
        y = y * F.silu(z.to(dt))
    y = y.to(u.dtype)
    if not return_last_state:
        return y
    return y, torch.cat(last, dim=0)


def selective_state_update_reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One step of the scan from ``state`` (batch, dim, N); returns (y (batch, dim), new_state) without mutating."""
    cd = _compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    dim = x.shape[1]
    dl = dt.to(cd)
    if dt_bias is not None:
        dl = dl + dt_bias.to(cd)
    if dt_softplus:
        dl = F.softplus(dl)
    B_ = _per_channel(B.to(cd), dim, B.dim() == 3)            # (b, d, N)
    C_ = _per_channel(C.to(cd), dim, C.dim() == 3)
    h = torch.exp(dl[..., None] * A.to(cd)) * state.to(cd) + dl[..., None] * B_ * x.to(cd)[..., None]
    y = (h * C_).sum(-1)
    if D is not None:
        y = y + D.to(cd) * x.to(cd)
    if z is not None:
        y = y * F.silu(z.to(cd))
    return y.to(x.dtype), h
