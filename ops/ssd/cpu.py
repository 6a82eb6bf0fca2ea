"""Mamba-2 SSD, chunked algorithm in plain torch (the fast CPU path; also runs on CUDA tensors).

Per chunk of Q positions (in-chunk index i, j; a_t = dt'_t A; s_i = a_0 + ... + a_i, a cumulative
sum restarted at every chunk):

    intra:   Y_i  = sum_{j<=i} exp(s_i - s_j) (C_i . B_j) dt'_j x_j          masked matmul (C B^T * L) (dt' X)
    states:  S_c  = sum_j exp(s_{Q-1} - s_j) dt'_j x_j B_j^T                 (P, N) per head
    passing: H_{c+1} = exp(s_{Q-1}) H_c + S_c,   H_0 = initial state          closed form: one masked\n             matmul over chunks (the same segment-sum trick one level up)
    inter:   Y_i += exp(s_i) H_c C_i
    output:  y = (Y + D x) * silu(z)

exp(s_i - s_j) is taken only where i >= j (the difference is masked to -inf before exp), so no
exp of a large positive number is ever formed. Matmul-heavy, so plain torch is right here;
gradients come from autograd through these chunk-vectorised ops (no Python loop over time or
chunks). Peak memory is O(L * Q * H): it grows with the chunk.
Accumulation is float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import ChunkLayout

__all__ = ["ssd_chunked", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ssd_chunked(x, dtp, A, B, C, D, z, initial_states, layout: ChunkLayout):
    """x: (b, L, H, P); dtp: (b, L, H) preprocessed dt'; A: (H,); B, C: (b, L, G, N);
    D: (H,) | (H, P) | None; z: (b, L, H, P) | None; initial_states: (n_seqs, H, P, N) | None.
    Returns y (b, L, H, P) in x.dtype and final states (n_seqs, H, P, N) in the compute dtype."""
    S, Cs, Q = layout.S, layout.Cs, layout.Q
    H, P = x.shape[2], x.shape[3]
    G, N = B.shape[2], B.shape[3]
    R = H // G
    cdt = compute_dtype(x.dtype)
    xq = layout.pack(x.to(cdt)).reshape(S, Cs, Q, G, R, P)
    dtq = layout.pack(dtp.to(cdt)).reshape(S, Cs, Q, G, R)
    Bq = layout.pack(B.to(cdt)).reshape(S, Cs, Q, G, N)
    Cq = layout.pack(C.to(cdt)).reshape(S, Cs, Q, G, N)
    acum = (dtq * A.to(cdt).view(G, R)).cumsum(2)                          # (S, Cs, Q, G, R)

    # intra-chunk: (C B^T * decay mask * dt_j) X
    CB = torch.einsum("scign,scjgn->scgij", Cq, Bq)                         # (S, Cs, G, Q, Q)
    s_t = acum.permute(0, 1, 3, 4, 2)                                       # (S, Cs, G, R, Q)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    seg = (s_t[..., :, None] - s_t[..., None, :]).masked_fill_(~causal, float("-inf"))
    M = CB[:, :, :, None] * torch.exp(seg)                                  # (S, Cs, G, R, Q, Q)
    y = torch.einsum("scgrij,scjgrp->scigrp", M, xq * dtq[..., None])       # (S, Cs, Q, G, R, P); dt_j on x_j

    # per-chunk states: B^T X weighted by the decay to the chunk end
    w_end = torch.exp(acum[:, :, -1:] - acum) * dtq                         # (S, Cs, Q, G, R)
    states = torch.einsum("scjgn,scjgrp->scgrpn", Bq, xq * w_end[..., None])  # (S, Cs, G, R, P, N)

    # state passing in closed form over chunks (a segment sum one level up, masked before exp):
    # H_c = sum_{start <= c' < c} exp(E_c - E_{c'} - d_{c'}) S_{c'} + exp(E_c - E_start) H_init,
    # d_c = s_{Q-1} of chunk c, E = exclusive cumsum of d over the row, start = the sequence's first chunk
    d = acum[:, :, -1].permute(0, 2, 3, 1)                                  # (S, G, R, Cs)
    E = d.cumsum(-1) - d
    idx = torch.arange(Cs, device=x.device)
    start = torch.zeros(S, Cs, dtype=torch.long)
    for s_, c_ in layout.starts:
        start[s_, c_:] = c_
    start = start.to(x.device)                                              # (S, Cs) first chunk of each chunk's seq
    ok = (idx[None, None, :] >= start[:, :, None]) & (idx[None, None, :] < idx[None, :, None])   # (S, c, c')
    W = (E[..., :, None] - (E + d)[..., None, :]).masked_fill_(~ok[:, None, None], float("-inf")).exp()
    H_in = torch.einsum("sgrcd,sdgrpn->scgrpn", W, states)                  # (S, Cs, G, R, P, N)
    if initial_states is not None:
        init = initial_states.to(cdt).reshape(-1, G, R, P, N)[layout.chunk_seq.long()]   # (S, Cs, G, R, P, N)
        w0 = torch.exp(E - torch.gather(E, -1, start[:, None, None, :].expand_as(E)))   # (S, G, R, Cs)
        H_in = H_in + w0.permute(0, 3, 1, 2)[..., None, None] * init
    ends = torch.tensor(layout.ends, dtype=torch.long, device=x.device).reshape(-1, 2)  # (n_seqs, 2): (s, c)
    dec_end = torch.exp(acum[ends[:, 0], ends[:, 1], -1])[..., None, None]  # (n_seqs, G, R, 1, 1)
    finals = dec_end * H_in[ends[:, 0], ends[:, 1]] + states[ends[:, 0], ends[:, 1]]

    # inter-chunk: exp(s_i) H_c C_i
    y = y + torch.einsum("scign,scgrpn->scigrp", Cq, H_in) * torch.exp(acum)[..., None]
    y = layout.unpack(y.reshape(S, Cs * Q, H, P))                           # (b, L, H, P)
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D).to(cdt) * x.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    final = finals.reshape(layout.n_seqs, H, P, N)
    return y.to(x.dtype), final
