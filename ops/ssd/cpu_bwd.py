"""Backward of the chunked SSD CPU path (``cpu.py``), written out by hand.

Forward per chunk (notation of cpu.py; ' = transpose, e_i = exp(s_i), w_j = exp(s_end - s_j),
Z = C H_c' so that Y_inter = e * Z):

    Y = (C B' * L) Xdt + e * (C H_c') + D x,   S_c = (w * Xdt)' B,   H_{c+1} = exp(s_end) H_c + S_c

Given dY and the gradient of the final states, with U = B dS_c' and dM = dY Xdt':

    inter:   dZ = e * dY;   dC += dZ H_c;   dH_c = dZ' C (+ passing)
    passing: dS_c = dH_{c+1} (or d final at a sequence end);   dH_c += exp(s_end) dS_c;
             ds_end += exp(s_end) <H_c, dS_c>;   d initial state = dH at the sequence's first chunk
    states:  dXdt += w * U;   dB += (w * Xdt) dS_c';   t_j = sum_p U_jp (w Xdt)_jp: ds_j -= t_j, ds_end += sum_j t_j
    intra:   dXdt += (C B' * L)' dY;   T = dM * L;   dCB = sum over the group's heads of T;
             dC += dCB B;  dB += dCB' C;  T *= CB:  ds_j -= sum_i T_ij
    s_i as the later index: the inter term sum_p dZ_ip Z_ip and the intra term sum_j T_ij add up to
             ds_i += dY_i . (Y_inter_i + Y_intra_i) = dY_i . (y_pre_i - D x_i), from the forward's
             y_pre: no recomputed C H_c' and no row sums of T
    inputs:  dx = dt' dXdt + D dY;  dD = sum x dY;  d dt' = sum_p x dXdt + A da;  dA = sum dt' da,
             da = reverse cumulative sum of ds within the chunk

Blocks of chunks run in reverse order; a loop over the block's chunks (never over time; one C call,
cpu_passing.py) carries the state gradient, and ds_end = exp(s_end) <H_c, dS_c> is one more C pass there
(state_dot); the per-token sums of ds, t and the w scale of U are one C pass per block (cpu_ds.py); dx,
d dt' and dD come out of one C pass per block (cpu_grad.py); each with a torch fallback. Everything else
is the forward's batched matmuls transposed, in the same layouts (B and C never
expanded per head). The (Q, N) products dC += dZ H_c and dB += (w Xdt) dS_c' contract over R*P: they
are computed as the transposes of (N, Q) products, a GEMM shape MKL runs ~25% faster here.
"""
from __future__ import annotations

import torch

from . import cpu_ds, cpu_grad
from .cpu import ChunkBlock, SSDChunks, stack_groups
from .cpu_passing import pass_bwd, state_dot

__all__ = ["ssd_chunked_backward"]


def _inter_and_passing(b: ChunkBlock, Hts, dyb, dfin_t, carry, dinit_t):
    """Inter-chunk and passing gradients of one block. Hts: (G, S, Cs, N, R, P) states entering each chunk
    (the block's are b.c0 .. b.c1 - 1); carry: gradient of the state entering chunk c1 (None at the end).
    Returns dC parts per group (S*K, Q, N), dSt (G, S, K, N, R, P) = gradients of the states leaving each
    chunk, ds_end (S, K, H) and the new carry (gradient of the state entering chunk c0)."""
    k = b.k
    G, R, P, N = k.G, k.R, k.P, k.N
    S, K, Q = dyb.shape[:3]
    dZ = dyb * b.e[..., None]                                                        # (S, K, Q, H, P)
    Hb = Hts[:, :, b.c0:b.c1]
    dHt = Hb.new_empty(G, S, K, N, R * P)
    dC_parts = []
    for g in range(G):
        Hg, Cg, dZg = b.state_mats(Hb, g), b.group(b.Cq, g), b.group(dZ, g)         # (S*K, N, RP), (S*K, Q, .)
        dC_parts.append(torch.bmm(Hg, dZg.transpose(1, 2)).transpose(1, 2))         # (S*K, Q, N) = (H dZ')'
        torch.bmm(Cg.transpose(1, 2), dZg, out=dHt[g].view(S * K, N, R * P))            # in place: no copy
    del dZ
    dHt = dHt.view(G, S, K, N, R, P)
    dSt = torch.empty_like(dHt)
    for ca, cb in reversed(k.runs(b.c0, b.c1)):
        if k.last[cb - 1]:
            carry = k.new_carry(dfin_t, cb - 1)
        pass_bwd(b.dec4, dHt, dSt, carry, ca - b.c0, cb - b.c0)
        if k.first[ca] and dinit_t is not None:
            k.state_slot(dinit_t, ca).copy_(carry)
    ds_end = state_dot(Hts, dSt, b.dec4, b.c0)                                      # (G, S, K, R)
    ds_end = ds_end.permute(1, 2, 0, 3).reshape(S, K, k.H)
    return dC_parts, dSt, ds_end, carry


def ssd_chunked_backward(k: SSDChunks, Hts: torch.Tensor, dy: torch.Tensor, ypre: torch.Tensor,
                         dfinal: torch.Tensor | None, want_dinit: bool):
    """Hts: (G, S, Cs, N, R, P) states entering each chunk (transposed), from the forward;
    dy: (b, L, H, P) the gradient of y_pre; ypre: (b, L, H, P) the forward's ungated output;
    dfinal: (n_seqs, H, P, N) | None. Returns dx, ddt', dA, dB, dC, dD (H, P) or None, dinit or
    None, in the compute dtype, shaped like the inputs."""
    lay = k.layout
    S, Cs, Q = lay.S, lay.Cs, lay.Q
    G, R, P, N, H = k.G, k.R, k.P, k.N, k.H
    dyq = lay.pack(dy.to(k.cdt)).reshape(S, Cs, Q, H, P)                            # (S, Cs, Q, H, P)
    ypq = lay.pack(ypre.to(k.cdt)).reshape(S, Cs, Q, H, P)
    dx = k.xq.new_empty(S, Cs, Q, H, P)
    ddt = k.xq.new_empty(S, Cs, Q, H)
    dB = k.xq.new_empty(S, Cs, Q, G, N)
    dC = k.xq.new_empty(S, Cs, Q, G, N)
    dA = k.xq.new_zeros(H)
    dD = None if k.D is None else k.xq.new_zeros(H, P)
    dfin_t = None if dfinal is None else k.state_t(dfinal.to(k.cdt))                # (G, n, N, R, P)
    dinit_t = k.xq.new_empty(G, lay.n_seqs, N, R, P) if want_dinit else None
    carry = None
    for c0, c1 in reversed(k.blocks()):
        b = k.block(c0, c1)
        dyb = dyq[:, c0:c1]
        dC_parts, dSt, ds_end, carry = _inter_and_passing(b, Hts, dyb, dfin_t, carry, dinit_t)
        # chunk states: U = B dS', dB += (w Xdt) dS'
        xw = b.xw()                                                                  # (S, K, Q, H, P)
        U_parts, dB_parts = [], []
        for g in range(G):
            dSg = b.state_mats(dSt, g)                                               # (S*K, N, RP)
            U_parts.append(torch.bmm(b.group(b.Bq, g), dSg))                        # (S*K, Q, RP)
            dB_parts.append(torch.bmm(dSg, b.group(xw, g).transpose(1, 2)).transpose(1, 2))  # (S*K, Q, N)
        del dSt
        dxdt = stack_groups(U_parts, 2).view(S, c1 - c0, Q, H, P)
        del U_parts
        # ds_i = dY_i . (y_pre_i - D x_i) - t_i with t_i = U_i . xw_i, and dXdt = w U: one C pass (cpu_ds.py), or torch
        fused = cpu_ds.block_ds(dxdt, xw, b.w, dyq, ypq, k.xq, k.D, c0)
        if fused is not None:
            ds, t = fused                                                            # (S, K, Q, H) each
        else:
            yss = ypq[:, c0:c1] if k.D is None else ypq[:, c0:c1] - b.xq * k.D       # Y_inter + Y_intra
            t = (dxdt * xw).sum(-1)
            ds = torch.linalg.vecdot(dyb, yss) - t
            del yss
            dxdt.mul_(b.w[..., None])
        del xw
        ds_end += t.sum(2)

        # intra-chunk (head-major)
        L = b.decay_mask()                                                           # (S, K, H, Q, Q)
        CB = b.cb()                                                                  # (S, K, G, 1, Q, Q)
        dyh = b.head_major(dyb)                                                      # (S, K, H, Q, P)
        M = (L.view(S, c1 - c0, G, R, Q, Q) * CB).view(S, c1 - c0, H, Q, Q)            # C B' * L
        dxdt += torch.matmul(M.transpose(-1, -2), dyh).permute(0, 1, 3, 2, 4)
        dM = torch.matmul(dyh, b.xdt_heads().transpose(-1, -2), out=M)               # (S, K, H, Q, Q)
        del dyh
        dM.mul_(L)
        del L
        dMg = dM.view(S, c1 - c0, G, R, Q, Q)
        dCB = dMg.sum(3)                                                             # (S, K, G, Q, Q)
        dMg.mul_(CB)
        ds -= dM.sum(-2).transpose(2, 3)
        del dM, dMg
        for g in range(G):
            dCBg = dCB[:, :, g].reshape(-1, Q, Q)
            dC_parts[g] += torch.bmm(dCBg, b.group(b.Bq, g))
            dB_parts[g] += torch.bmm(dCBg.transpose(1, 2), b.group(b.Cq, g))

        # inputs: Xdt = dt' x; s = cumsum(dt' A); D x
        ds[:, :, -1] += ds_end
        da = ds.flip(2).cumsum(2).flip(2)                                            # (S, K, Q, H)
        dA += (da * b.dtq).sum((0, 1, 2))
        # dx, d dt', dD: one pass into dx and ddt (cpu_grad.py), or torch
        if not cpu_grad.block_input_grads(dxdt, k.xq, dyq, k.dtq, da, k.A, k.D, dx, ddt, dD, c0):
            ddt[:, c0:c1] = (dxdt * b.xq).sum(-1).addcmul_(da, k.A)
            dxdt.mul_(b.dtq[..., None])
            if dD is not None:
                dxdt.addcmul_(dyb, k.D)
                dD += (dyb * b.xq).sum((0, 1, 2))
            dx[:, c0:c1] = dxdt
        dB[:, c0:c1] = stack_groups(dB_parts, 2).view(S, c1 - c0, Q, G, N)
        dC[:, c0:c1] = stack_groups(dC_parts, 2).view(S, c1 - c0, Q, G, N)
    Lp = Cs * Q
    dinit = None if dinit_t is None else k.state_untransposed(dinit_t)
    return (lay.unpack(dx.view(S, Lp, H, P)), lay.unpack(ddt.view(S, Lp, H)), dA, lay.unpack(dB.view(S, Lp, G, N)),
            lay.unpack(dC.view(S, Lp, G, N)), dD, dinit)
