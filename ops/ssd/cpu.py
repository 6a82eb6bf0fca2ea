"""Mamba-2 SSD, chunked algorithm in plain torch with a hand-written backward (the fast CPU path;
also runs on CUDA tensors).

Per chunk of Q positions (in-chunk index i, j; a_t = dt'_t A; s_i = a_0 + ... + a_i, a cumulative
sum restarted at every chunk; xdt_j = dt'_j x_j):

    intra:   Y_i  = sum_{j<=i} (C_i . B_j) exp(s_i - s_j) xdt_j         masked matmul (C B^T * L) Xdt
    states:  S_c  = sum_j exp(s_{Q-1} - s_j) xdt_j B_j^T                (P, N) per head
    passing: H_{c+1} = exp(s_{Q-1}) H_c + S_c,  H = initial state at a sequence's first chunk
    inter:   Y_i += exp(s_i) H_c C_i
    (D x and the silu(z) gate are applied by the caller, ops/ssd/__init__.py.)

L_ij = exp(s_i - s_j) is formed only for i >= j (masked to -inf before exp), so no exp of a large
positive number appears. Layouts (one job each, no per-head copies of B, C):
* intra-chunk: head-major (S, Cs, H, Q, Q) masks times (S, Cs, H, Q, P) inputs, one batched matmul;
* states, inter-chunk and their gradients: token layout, heads in the matmul's column dimension:
  per group g, (Q, N) x (N, R*P) with the state kept transposed as (N, R*P) (R = H / G heads
  share the group's B and C), so B and C are read once per group, never expanded per head;
* passing: a loop over chunks (not over time) of one fused multiply-add on (G, S, N, R, P).
The backward (``cpu_bwd.py``) mirrors these steps: a reverse loop over chunks for the state
gradients, the same batched matmuls transposed, and the decay gradients gathered as ds_i and turned
into d(dt' A) by a reverse cumulative sum. Saved for backward: the inputs and one (N, R*P) state per
chunk and head; the Q x Q masks are recomputed. Peak memory is O(L * H * Q + (L / Q) * H * P * N).
Accumulation is float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch

from .layout import ChunkLayout

__all__ = ["ssd_chunked", "compute_dtype", "SSDChunks", "stack_groups"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class SSDChunks:
    """Packed, chunked views of the inputs plus the small per-chunk quantities both passes use."""

    def __init__(self, x, dtp, A, B, C, layout: ChunkLayout):
        S, Cs, Q = layout.S, layout.Cs, layout.Q
        self.layout = layout
        self.H, self.P = x.shape[2], x.shape[3]
        self.G, self.N = B.shape[2], B.shape[3]
        self.R = self.H // self.G
        self.cdt = cdt = compute_dtype(x.dtype)
        self.xq = layout.pack(x.to(cdt)).reshape(S, Cs, Q, self.H, self.P)          # (S, Cs, Q, H, P)
        self.dtq = layout.pack(dtp.to(cdt)).reshape(S, Cs, Q, self.H)              # (S, Cs, Q, H)
        self.Bq = layout.pack(B.to(cdt)).reshape(S, Cs, Q, self.G, self.N)          # (S, Cs, Q, G, N)
        self.Cq = layout.pack(C.to(cdt)).reshape(S, Cs, Q, self.G, self.N)
        self.A = A.to(cdt)
        self.s = (self.dtq * self.A).cumsum(2)                                     # (S, Cs, Q, H) s_i
        self.s_end = self.s[:, :, -1]                                               # (S, Cs, H)
        self.w = torch.exp(self.s_end[:, :, None] - self.s)                         # (S, Cs, Q, H) exp(s_end - s_j)
        self.first = [False] * Cs                                                   # chunk starts a sequence
        self.last = [False] * Cs                                                    # chunk ends a sequence
        for _, c in layout.starts:
            self.first[c] = True
        for _, c in layout.ends:
            self.last[c] = True

    # -- views ------------------------------------------------------------------------------------
    def group(self, t: torch.Tensor, g: int) -> torch.Tensor:
        """(S, Cs, Q, G, K) token-layout tensor -> group g as a batch of (Q, K) matrices (S*Cs, Q, K);
        for x-like tensors K = R*P (the group's heads side by side)."""
        S, Cs, Q = t.shape[:3]
        return t.reshape(S, Cs, Q, self.G, -1)[:, :, :, g].reshape(S * Cs, Q, -1)

    def head_major(self, t: torch.Tensor) -> torch.Tensor:
        """(S, Cs, Q, H, P) -> contiguous (S, Cs, H, Q, P)."""
        return t.permute(0, 1, 3, 2, 4).contiguous()

    def decay_mask(self) -> torch.Tensor:
        """L (S, Cs, H, Q, Q): exp(s_i - s_j) for i >= j, else 0 (masked before exp)."""
        sh = self.s.transpose(2, 3).contiguous()                                    # (S, Cs, H, Q)
        seg = sh[..., :, None] - sh[..., None, :]
        Q = sh.shape[-1]
        upper = torch.ones(Q, Q, dtype=torch.bool, device=seg.device).triu_(1)
        return seg.masked_fill_(upper, float("-inf")).exp_()

    def cb(self) -> torch.Tensor:
        """C B^T per chunk and group: (S, Cs, G, Q, Q)."""
        S, Cs, Q = self.s.shape[:3]
        out = [torch.bmm(self.group(self.Cq, g), self.group(self.Bq, g).transpose(1, 2)) for g in range(self.G)]
        return torch.stack(out, 1).reshape(S, Cs, self.G, Q, Q) if self.G > 1 else out[0].reshape(S, Cs, 1, Q, Q)

    def heads_of(self, t: torch.Tensor) -> torch.Tensor:
        """(S, Cs, G, Q, Q) group tensor -> (S, Cs, G, 1, Q, Q), broadcasting over the group's heads."""
        return t[:, :, :, None]

    def chunk_decay(self) -> torch.Tensor:
        """exp(s_end) per chunk and head in the transposed-state layout: (G, S, Cs, 1, R, 1)."""
        S, Cs = self.s.shape[:2]
        return torch.exp(self.s_end).reshape(S, Cs, self.G, self.R).permute(2, 0, 1, 3)[:, :, :, None, :, None]

    def state_t(self, st: torch.Tensor) -> torch.Tensor:
        """(n, H, P, N) states -> transposed layout (G, n, N, R, P) (a view)."""
        n = st.shape[0]
        return st.reshape(n, self.G, self.R, self.P, self.N).permute(1, 0, 4, 2, 3)

    def state_untransposed(self, st: torch.Tensor) -> torch.Tensor:
        """(G, n, N, R, P) -> (n, H, P, N) contiguous."""
        n = st.shape[1]
        return st.permute(1, 0, 3, 4, 2).reshape(n, self.H, self.P, self.N)

    def ends(self):
        e = torch.tensor(self.layout.ends, dtype=torch.long, device=self.s.device).reshape(-1, 2)
        return e[:, 0], e[:, 1]


def stack_groups(parts: list, dim: int) -> torch.Tensor:
    """Per-group results -> one tensor with a group dimension at ``dim`` (no copy when G = 1)."""
    return torch.stack(parts, dim) if len(parts) > 1 else parts[0].unsqueeze(dim)


def _forward(k: SSDChunks, initial_states):
    """Returns y (b, L, H, P) in compute dtype, finals (n, H, P, N) and the per-chunk entering states
    Hts (G, S, Cs, N, R, P) (transposed) for the backward."""
    lay = k.layout
    S, Cs, Q = lay.S, lay.Cs, lay.Q
    G, R, P, N, H = k.G, k.R, k.P, k.N, k.H

    # intra-chunk (head-major): (C B^T * L) Xdt
    M = k.decay_mask()                                                               # (S, Cs, H, Q, Q)
    M.view(S, Cs, G, R, Q, Q).mul_(k.heads_of(k.cb()))
    xdt_h = k.head_major(k.xq * k.dtq[..., None])                                   # (S, Cs, H, Q, P)
    y_intra = torch.matmul(M, xdt_h)                                                # (S, Cs, H, Q, P)
    del M, xdt_h

    # chunk states, transposed: St[g] = B_g^T (w * Xdt)_g  (N, R*P) per chunk
    xw = k.xq * (k.dtq * k.w)[..., None]                                            # (S, Cs, Q, H, P)
    St = torch.stack([torch.bmm(k.group(k.Bq, g).transpose(1, 2), k.group(xw, g)) for g in range(G)])
    St = St.reshape(G, S, Cs, N, R, P)
    del xw

    # passing over chunks: Hts[:, :, c] = state entering chunk c
    dec = k.chunk_decay()                                                            # (G, S, Cs, 1, R, 1)
    Hts = St.new_empty(G, S, Cs, N, R, P)
    init_t = None if initial_states is None else k.state_t(initial_states.to(k.cdt))  # (G, n, N, R, P)
    for c in range(Cs):
        if k.first[c]:
            if init_t is None:
                Hts[:, :, c].zero_()
            elif lay.pos is None:
                Hts[:, :, c] = init_t
            else:
                Hts[:, 0, c] = init_t[:, int(lay.chunk_seq[0, c])]
        else:
            torch.addcmul(St[:, :, c - 1], Hts[:, :, c - 1], dec[:, :, c - 1], out=Hts[:, :, c])
    es, ec = k.ends()
    finals = Hts[:, es, ec] * dec[:, es, ec] + St[:, es, ec]                         # (G, n, N, R, P)

    # inter-chunk (token layout): Y_i += exp(s_i) C_i H_c, per group (Q, N) x (N, R*P)
    Z = [torch.bmm(k.group(k.Cq, g), Hts[g].reshape(S * Cs, N, R * P)) for g in range(G)]
    Z = stack_groups(Z, 2)                                                           # (S*Cs, Q, G, R*P)
    y = Z.reshape(S, Cs, Q, H, P).mul_(torch.exp(k.s)[..., None])
    y += y_intra.permute(0, 1, 3, 2, 4)
    y = lay.unpack(y.reshape(S, Cs * Q, H, P))                                       # (b, L, H, P)
    return y, k.state_untransposed(finals), Hts


class _SSDChunkedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dtp, A, B, C, initial_states, layout):
        k = SSDChunks(x, dtp, A, B, C, layout)
        y, finals, Hts = _forward(k, initial_states)
        ctx.save_for_backward(x, dtp, A, B, C, initial_states, Hts)
        ctx.layout = layout
        return y.contiguous(), finals                                              # compute dtype

    @staticmethod
    def backward(ctx, dy, dfinal):
        from .cpu_bwd import ssd_chunked_backward

        x, dtp, A, B, C, initial_states, Hts = ctx.saved_tensors
        k = SSDChunks(x, dtp, A, B, C, ctx.layout)
        dx, ddt, dA, dB, dC, dinit = ssd_chunked_backward(k, Hts, dy, dfinal, initial_states is not None)
        return (dx.to(x.dtype), ddt.to(dtp.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                None if dinit is None else dinit.to(initial_states.dtype), None)


def ssd_chunked(x, dtp, A, B, C, D, z, initial_states, layout: ChunkLayout):
    """x: (b, L, H, P); dtp: (b, L, H) preprocessed dt'; A: (H,); B, C: (b, L, G, N);
    D: (H,) | (H, P) | None; z: (b, L, H, P) | None; initial_states: (n_seqs, H, P, N) | None.
    Returns y (b, L, H, P) in x.dtype and final states (n_seqs, H, P, N) in the compute dtype."""
    y, final = _SSDChunkedFn.apply(x, dtp, A, B, C, initial_states, layout)    # y in the compute dtype
    cdt = y.dtype
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D).to(cdt) * x.to(cdt)
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(cdt))
    return y.to(x.dtype), final
