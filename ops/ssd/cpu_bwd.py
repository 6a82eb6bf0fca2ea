"""Backward of the chunked SSD CPU path (``cpu.py``), written out by hand.

Forward per chunk (notation of cpu.py; ' = transpose, e_i = exp(s_i), w_j = exp(s_end - s_j),
Z = C H_c' so that Y_inter = e * Z):

    Y = (C B' * L) Xdt + e * (C H_c'),   S_c = (w * Xdt)' B,   H_{c+1} = exp(s_end) H_c + S_c

Given dY and the gradient of the final states, with U = B dS_c' and dM = dY Xdt':

    inter:   dZ = e * dY;   dC += dZ H_c;   dH_c = dZ' C (+ passing);   ds_i += sum_p dZ_ip Z_ip
    passing: dS_c = dH_{c+1} (or d final at a sequence end);   dH_c += exp(s_end) dS_c;
             ds_end += exp(s_end) <H_c, dS_c>;   d initial state = dH at the sequence's first chunk
    states:  dXdt += w * U;   dB += (w * Xdt) dS_c';   t_j = sum_p U_jp (w Xdt)_jp: ds_j -= t_j, ds_end += sum_j t_j
    intra:   dXdt += (C B' * L)' dY;   T = dM * L;   dCB = sum over the group's heads of T;
             dC += dCB B;  dB += dCB' C;  T *= CB:  ds_i += sum_j T_ij,  ds_j -= sum_i T_ij
    inputs:  dx = dt' dXdt;  d dt' = sum_p x dXdt + A da;  dA = sum dt' da,  da = reverse cumsum of ds

A reverse loop over chunks (never over time) carries the state gradient; everything else is the
forward's batched matmuls transposed, in the same layouts (B and C never expanded per head).
"""
from __future__ import annotations

import torch

from .cpu import SSDChunks, stack_groups

__all__ = ["ssd_chunked_backward"]


def ssd_chunked_backward(k: SSDChunks, Hts: torch.Tensor, dy: torch.Tensor, dfinal: torch.Tensor | None,
                         want_dinit: bool):
    """Hts: (G, S, Cs, N, R, P) states entering each chunk (transposed), from the forward;
    dy: (b, L, H, P); dfinal: (n_seqs, H, P, N) | None. Returns dx, ddt', dA, dB, dC, dinit (or None)
    in the compute dtype, shaped like the inputs."""
    lay = k.layout
    S, Cs, Q = lay.S, lay.Cs, lay.Q
    G, R, P, N, H = k.G, k.R, k.P, k.N, k.H
    RP = R * P
    dyq = lay.pack(dy.to(k.cdt)).reshape(S, Cs, Q, H, P)                            # (S, Cs, Q, H, P)

    # inter-chunk: dZ = e * dY (token layout); per group (Q, R*P) matmuls with the (N, R*P) states
    dZ = dyq * torch.exp(k.s)[..., None]
    dHts = torch.empty_like(Hts)                                                     # (G, S, Cs, N, R, P)
    ds_parts, dC_parts = [], []
    for g in range(G):
        Hg = Hts[g].reshape(S * Cs, N, RP)
        Cg, dZg = k.group(k.Cq, g), k.group(dZ, g)                                  # (S*Cs, Q, N), (S*Cs, Q, RP)
        Zg = torch.bmm(Cg, Hg)
        ds_parts.append(Zg.mul_(dZg).reshape(S, Cs, Q, R, P).sum(-1))               # (S, Cs, Q, R)
        dC_parts.append(torch.bmm(dZg, Hg.transpose(1, 2)))                         # (S*Cs, Q, N)
        torch.bmm(Cg.transpose(1, 2), dZg, out=dHts[g].view(S * Cs, N, RP))
    del dZ
    ds = torch.cat(ds_parts, -1) if G > 1 else ds_parts[0]                          # (S, Cs, Q, H)

    # passing, reversed over chunks: dSt[:, :, c] = gradient of the state leaving chunk c
    dec = k.chunk_decay()                                                            # (G, S, Cs, 1, R, 1)
    dSt = torch.empty_like(Hts)
    dfin_t = None if dfinal is None else k.state_t(dfinal.to(k.cdt))                # (G, n, N, R, P)
    for c in reversed(range(Cs)):
        if k.last[c]:
            if dfin_t is None:
                dSt[:, :, c].zero_()
            elif lay.pos is None:
                dSt[:, :, c] = dfin_t
            else:
                dSt[:, 0, c] = dfin_t[:, int(lay.chunk_seq[0, c])]
        else:
            dSt[:, :, c] = dHts[:, :, c + 1]
        dHts[:, :, c].addcmul_(dSt[:, :, c], dec[:, :, c])
    ds_end = (Hts * dSt).sum((3, 5)).mul_(dec[:, :, :, 0, :, 0])                   # (G, S, Cs, R)
    ds_end = ds_end.permute(1, 2, 0, 3).reshape(S, Cs, H)
    dinit = None
    if want_dinit:
        st = torch.tensor(lay.starts, dtype=torch.long, device=Hts.device).reshape(-1, 2)
        dinit = k.state_untransposed(dHts[:, st[:, 0], st[:, 1]])                   # (n, H, P, N)
    del dHts

    # chunk states: U = B dS', dB += (w Xdt) dS'
    xw = k.xq * (k.dtq * k.w)[..., None]                                            # (S, Cs, Q, H, P)
    U_parts, dB_parts = [], []
    for g in range(G):
        dSg = dSt[g].reshape(S * Cs, N, RP)
        U_parts.append(torch.bmm(k.group(k.Bq, g), dSg))                            # (S*Cs, Q, RP)
        dB_parts.append(torch.bmm(k.group(xw, g), dSg.transpose(1, 2)))             # (S*Cs, Q, N)
    del dSt
    U = stack_groups(U_parts, 2).reshape(S, Cs, Q, H, P)
    del U_parts
    t = (U * xw).sum(-1)                                                             # (S, Cs, Q, H)
    del xw
    ds -= t
    ds_end += t.sum(2)
    dxdt = U.mul_(k.w[..., None])                                                    # (S, Cs, Q, H, P)

    # intra-chunk (head-major)
    Lm = k.decay_mask()                                                              # (S, Cs, H, Q, Q)
    CB = k.cb()                                                                      # (S, Cs, G, Q, Q)
    M = (Lm.view(S, Cs, G, R, Q, Q) * k.heads_of(CB)).view(S, Cs, H, Q, Q)
    dyh = k.head_major(dyq)                                                          # (S, Cs, H, Q, P)
    dxdt += torch.matmul(M.transpose(-1, -2), dyh).permute(0, 1, 3, 2, 4)
    xdt_h = k.head_major(k.xq * k.dtq[..., None])
    dM = torch.matmul(dyh, xdt_h.transpose(-1, -2), out=M)                           # (S, Cs, H, Q, Q)
    del dyh, xdt_h
    dM.mul_(Lm)
    del Lm
    dCB = dM.view(S, Cs, G, R, Q, Q).sum(3)                                          # (S, Cs, G, Q, Q)
    dM.view(S, Cs, G, R, Q, Q).mul_(k.heads_of(CB))
    ds += (dM.sum(-1) - dM.sum(-2)).transpose(2, 3)
    del dM
    for g in range(G):
        dCBg = dCB[:, :, g].reshape(S * Cs, Q, Q)
        dC_parts[g] += torch.bmm(dCBg, k.group(k.Bq, g))
        dB_parts[g] += torch.bmm(dCBg.transpose(1, 2), k.group(k.Cq, g))

    # inputs: Xdt = dt' x; s = cumsum(dt' A)
    ds[:, :, -1] += ds_end
    da = ds.flip(2).cumsum(2).flip(2)                                                # (S, Cs, Q, H)
    ddt = (dxdt * k.xq).sum(-1).add_(da * k.A)
    dA = (da * k.dtq).sum((0, 1, 2))
    dx = dxdt.mul_(k.dtq[..., None])
    Lp = Cs * Q
    dB = stack_groups(dB_parts, 2).reshape(S, Lp, G, N)
    dC = stack_groups(dC_parts, 2).reshape(S, Lp, G, N)
    return (lay.unpack(dx.reshape(S, Lp, H, P)), lay.unpack(ddt.reshape(S, Lp, H)), dA,
            lay.unpack(dB), lay.unpack(dC), dinit)
