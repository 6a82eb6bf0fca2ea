"""Mamba-2 SSD, chunked algorithm in plain torch with a hand-written backward (the fast CPU path;
also runs on CUDA tensors).

Per chunk of Q positions (in-chunk index i, j; a_t = dt'_t A; s_i = a_0 + ... + a_i, a cumulative
sum restarted at every chunk; xdt_j = dt'_j x_j):

    intra:   Y_i  = sum_{j<=i} (C_i . B_j) exp(s_i - s_j) xdt_j         masked matmul (C B^T * L) Xdt
    states:  S_c  = sum_j exp(s_{Q-1} - s_j) xdt_j B_j^T                (P, N) per head
    passing: H_{c+1} = exp(s_{Q-1}) H_c + S_c,  H = initial state at a sequence's first chunk
    inter:   Y_i += exp(s_i) H_c C_i
    output:  Y_i += D x_i,  Y_i *= silu(z_i)  (the gate applied block by block)

L_ij = exp(s_i - s_j) is formed only for i >= j, so no exp of a large positive number appears;
exponents below EXP_FLOOR are floored there (exp of -inf or into denormals is ~10x slower on CPU).
Fused C loops, each with a torch fallback: the forward's intra-chunk matrix C B^T * L * dt'_j
(+ D on the diagonal), so that the intra-chunk output is one matmul with x (cpu_decay.py); the state
passing (cpu_passing.py); the block's output exp(s_i) Z + Y_intra gated by silu(z), and the gate's
backward (cpu_output.py); the backward's per-token sums and input gradients (cpu_ds.py, cpu_grad.py).
Layouts (no per-head copies of B and C):
* intra-chunk: head-major (.., H, Q, Q) masks times (.., H, Q, P) inputs, one batched matmul;
* states, inter-chunk and their gradients: token layout with the heads in the matmul's column
  dimension: per group g, (Q, N) x (N, R*P), the state kept transposed as (N, R*P) (R = H / G heads
  share the group's B and C), so B and C are read once per group, never expanded per head;
* passing: a loop over chunks (never over time), one fused C call per run of chunks
  (cpu_passing.py; pure-torch fallback without a compiler).
The work runs over blocks of chunks (``BLOCK_ELEMS`` numbers per temporary): small temporaries stay
in cache and are recycled by the allocator (a fresh 50 MB tensor per step costs more in page faults
than the arithmetic on it). The backward (``cpu_bwd.py``) mirrors the forward block by block in
reverse. Saved for backward: the inputs, the (N, R*P) state entering each chunk (in a flat buffer whose
size does not depend on cu_seqlens' values, see ``states_capacity``) and, with z, the ungated y; the
Q x Q masks are recomputed. Forward and backward are the custom ops ``parazoo::ssd_chunked`` and
``parazoo::ssd_chunked_bwd`` (bottom of this file), so torch.compile traces through the C loops.
Peak memory is O(block * H * Q * Q + (L / Q) * H * P * N); without a backward to follow (no grad),
O(block * (H * Q * Q + H * P * N)): the states live one block at a time.
Accumulation is float32 (float64 for float64 inputs).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import cpu_decay, cpu_output
from .cpu_passing import pass_fwd
from .layout import ChunkLayout, make_layout

__all__ = ["ssd_chunked", "compute_dtype", "SSDChunks", "ChunkBlock", "stack_groups", "BLOCK_ELEMS"]

# exponents are floored here in the Q x Q decay masks: exp(floor) is a normal number (no denormals)
# that no float32/float64 sum of O(1) terms can see (1.8e-35 and 1.0e-304)
EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}
# numbers per block temporary (e.g. the (K, H, Q, Q) masks of K chunks): about 4 MB in float32
BLOCK_ELEMS = 1 << 20


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def stack_groups(parts: list, dim: int) -> torch.Tensor:
    """Per-group results -> one tensor with a group dimension at ``dim`` (no copy when G = 1)."""
    return torch.stack(parts, dim) if len(parts) > 1 else parts[0].unsqueeze(dim)


class SSDChunks:
    """Packed, chunked views of the inputs, chunk metadata and the state layout helpers."""

    def __init__(self, x, dtp, A, B, C, D, layout: ChunkLayout, z=None):
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
        self.zq = None if z is None else layout.pack(z.to(cdt)).reshape(S, Cs, Q, self.H, self.P).contiguous()
        self.A = A.to(cdt)
        self.D = None if D is None else (D[:, None] if D.dim() == 1 else D).to(cdt)   # (H, 1) | (H, P)
        self.first, self.last, self.seq = [False] * Cs, [False] * Cs, layout.chunk_seq[0].tolist()
        for _, c in layout.starts:
            self.first[c] = True                                                    # chunk starts a sequence
        for _, c in layout.ends:
            self.last[c] = True                                                     # chunk ends a sequence
        per_chunk = S * self.H * Q * max(Q, self.P, self.N)
        self.K = max(1, BLOCK_ELEMS // per_chunk)                                   # chunks per block

    def blocks(self) -> list:
        Cs = self.layout.Cs
        return [(c0, min(c0 + self.K, Cs)) for c0 in range(0, Cs, self.K)]

    def block(self, c0: int, c1: int) -> "ChunkBlock":
        return ChunkBlock(self, c0, c1)

    def runs(self, c0: int, c1: int) -> list:
        """Chunks c0 .. c1-1 cut into runs (ca, cb) that contain no sequence start after their first chunk."""
        cuts = [c for c in range(c0 + 1, c1) if self.first[c]]
        return list(zip([c0] + cuts, cuts + [c1]))

    def new_carry(self, states: torch.Tensor | None, c: int) -> torch.Tensor:
        """A fresh contiguous (G, S, N, R, P) carry: the slot of chunk c's sequence in the per-sequence
        (G, n, N, R, P) ``states``, or zeros."""
        S = self.layout.S
        carry = torch.zeros(self.G, S, self.N, self.R, self.P, dtype=self.cdt, device=self.xq.device)
        return carry if states is None else carry.copy_(self.state_slot(states, c))

    def state_slot(self, states: torch.Tensor, c: int) -> torch.Tensor:
        """Entry of a per-sequence (G, n, N, R, P) state tensor for the sequence of chunk c, as
        (G, S, N, R, P): all rows when dense (n = S), the chunk's sequence when packed (S = 1)."""
        return states if self.layout.pos is None else states[:, self.seq[c]][:, None]

    def state_t(self, st: torch.Tensor) -> torch.Tensor:
        """(n, H, P, N) states -> transposed layout (G, n, N, R, P) (a view)."""
        return st.reshape(st.shape[0], self.G, self.R, self.P, self.N).permute(1, 0, 4, 2, 3)

    def state_untransposed(self, st: torch.Tensor) -> torch.Tensor:
        """(G, n, N, R, P) -> (n, H, P, N) contiguous (reshape alone keeps a view where G = 1, N outermost)."""
        return st.permute(1, 0, 3, 4, 2).reshape(st.shape[1], self.H, self.P, self.N).contiguous()


class ChunkBlock:
    """Chunks c0 .. c1-1 of every row: sliced inputs, in-chunk decays and the per-block products."""

    def __init__(self, k: SSDChunks, c0: int, c1: int):
        self.k, self.c0, self.c1 = k, c0, c1
        self.xq, self.dtq = k.xq[:, c0:c1], k.dtq[:, c0:c1]                        # (S, K, Q, H, P), (S, K, Q, H)
        self.Bq, self.Cq = k.Bq[:, c0:c1], k.Cq[:, c0:c1]                           # (S, K, Q, G, N)
        self.zq = None if k.zq is None else k.zq[:, c0:c1]                          # (S, K, Q, H, P)
        self.s = (self.dtq * k.A).cumsum(2)                                         # (S, K, Q, H) s_i
        self.s_end = self.s[:, :, -1]                                               # (S, K, H)
        self.w = torch.exp(self.s_end[:, :, None] - self.s)                         # exp(s_end - s_j)
        self.e = torch.exp(self.s)                                                  # exp(s_i)
        S, K = self.s.shape[:2]
        # exp(s_end) per chunk and head, (G, S, K, R), and shaped for the transposed states (G, S, K, 1, R, 1)
        self.dec4 = torch.exp(self.s_end).reshape(S, K, k.G, k.R).permute(2, 0, 1, 3).contiguous()
        self.dec = self.dec4[:, :, :, None, :, None]

    def group(self, t: torch.Tensor, g: int) -> torch.Tensor:
        """(S, K, Q, G, X) token-layout tensor -> group g as a batch of (Q, X) matrices (S*K, Q, X);
        for x-like tensors X = R*P (the group's heads side by side)."""
        S, K, Q = t.shape[:3]
        return t.reshape(S, K, Q, self.k.G, -1)[:, :, :, g].reshape(S * K, Q, -1)

    def state_mats(self, st: torch.Tensor, g: int) -> torch.Tensor:
        """(G, S, K, N, R, P) states -> group g as (S*K, N, R*P) matrices."""
        S, K = st.shape[1:3]
        return st[g].reshape(S * K, self.k.N, -1)

    def head_major(self, t: torch.Tensor) -> torch.Tensor:
        """(S, K, Q, H, P) -> contiguous (S, K, H, Q, P)."""
        return t.permute(0, 1, 3, 2, 4).contiguous()

    def xdt_heads(self) -> torch.Tensor:
        """dt' x, head-major (S, K, H, Q, P)."""
        S, K, Q, H, P = self.xq.shape
        out = self.xq.new_empty(S, K, H, Q, P)
        return torch.mul(self.xq.permute(0, 1, 3, 2, 4), self.dtq.transpose(2, 3)[..., None], out=out)

    def xw(self) -> torch.Tensor:
        """exp(s_end - s_j) dt'_j x_j, token layout (S, K, Q, H, P)."""
        return self.xq * (self.dtq * self.w)[..., None]

    def decay_mask(self, CB: torch.Tensor | None = None, dt: bool = False, D: torch.Tensor | None = None):
        """L (S, K, H, Q, Q): exp(s_i - s_j) for i >= j, else 0; times C B^T (``cb()``, (S, K, G, 1, Q, Q))
        and times dt'_j (column j) and plus D (H,) on the diagonal when asked, which makes the forward's
        (C B^T * L) Xdt + D x one matmul with x. The exponent is floored at EXP_FLOOR below the diagonal:
        exp of -inf, or of anything that underflows to a denormal, is about 10x slower on CPU, and
        exp(EXP_FLOOR) is already far below what the sums can resolve. One fused C loop (cpu_decay.py)
        where it applies; else torch, with the exponent zeroed above the diagonal before exp and the
        result masked after."""
        sh = self.s.transpose(2, 3).contiguous()                                    # (S, K, H, Q)
        w = self.dtq.transpose(2, 3).contiguous() if dt else None                   # (S, K, H, Q)
        floor = EXP_FLOOR[torch.float64 if sh.dtype == torch.float64 else torch.float32]
        L = cpu_decay.decay_mask(sh, floor, None if CB is None else CB.contiguous(), self.k.R, w,
                                 None if D is None else D.contiguous())
        if L is not None:
            return L
        seg = sh[..., :, None] - sh[..., None, :]
        S, K, H, Q = sh.shape
        upper = torch.ones(Q, Q, dtype=torch.bool, device=seg.device).triu_(1)
        L = seg.masked_fill_(upper, 0.0).clamp_(min=floor).exp_().masked_fill_(upper, 0.0)
        if CB is not None:
            L.view(S, K, self.k.G, self.k.R, Q, Q).mul_(CB)
        if w is not None:
            L.mul_(w[..., None, :])
        if D is not None:
            L.diagonal(dim1=-2, dim2=-1).add_(D[:, None])
        return L

    def cb(self) -> torch.Tensor:
        """C B^T per chunk and group, shaped to broadcast over the group's heads: (S, K, G, 1, Q, Q)."""
        S, K, Q = self.s.shape[:3]
        out = [torch.bmm(self.group(self.Cq, g), self.group(self.Bq, g).transpose(1, 2)) for g in range(self.k.G)]
        return stack_groups(out, 1).reshape(S, K, self.k.G, 1, Q, Q)


def states_capacity(b: int, L: int, Q: int, n_seqs: int, packed: bool, G: int, N: int, H: int, P: int) -> int:
    """Numbers in the flat buffer that holds the states entering every chunk, (G, S, Cs, N, R, P) at its
    front: exact for a dense batch; for packed sequences Cs depends on their lengths, and
    Cs <= ceil(L / Q) + n_seqs bounds it without reading them (a static size for the custom op's fake)."""
    S, Cs = (1, -(-L // Q) + n_seqs) if packed else (b, max(1, -(-L // Q)))
    return G * S * Cs * N * H * P


def states_view(flat: torch.Tensor, k: "SSDChunks") -> torch.Tensor:
    """The (G, S, Cs, N, R, P) states at the front of a ``states_capacity`` buffer (contiguous)."""
    lay = k.layout
    shape = (k.G, lay.S, lay.Cs, k.N, k.R, k.P)
    return flat[:k.G * lay.S * lay.Cs * k.N * k.R * k.P].view(shape)


def _forward(k: SSDChunks, initial_states, keep: bool):
    """Returns y (b, L, H, P) in the compute dtype, times silu(z) when z is given, and the final
    states finals (n, H, P, N). With ``keep`` (a backward will run) also a flat buffer holding the states
    entering every chunk Hts (G, S, Cs, N, R, P) (transposed; ``states_view``) and, with z, the ungated
    y_pre (b, L, H, P); without, None and None: the states then exist one block at a time."""
    lay = k.layout
    S, Cs, Q = lay.S, lay.Cs, lay.Q
    G, R, P, N, H = k.G, k.R, k.P, k.N, k.H
    y = k.xq.new_empty(S, Cs, Q, H, P)
    ypre = k.xq.new_empty(S, Cs, Q, H, P) if keep and k.zq is not None else None
    flat = None
    if keep:
        flat = k.xq.new_empty(states_capacity(lay.b, lay.L, Q, lay.n_seqs, lay.pos is not None, G, N, H, P))
    Hts = None if flat is None else states_view(flat, k)
    finals = k.xq.new_empty(G, lay.n_seqs, N, R, P)
    init_t = None if initial_states is None else k.state_t(initial_states.to(k.cdt))    # (G, n, N, R, P)
    carry = None                                                                    # state leaving the last chunk
    for c0, c1 in k.blocks():
        b = k.block(c0, c1)
        # intra-chunk (head-major): (C B^T * L * dt'_j + diag(D)) x; D of shape (H, P) is added below
        Dd = k.D[:, 0] if k.D is not None and k.D.shape[1] == 1 else None
        y_intra = torch.matmul(b.decay_mask(b.cb(), dt=True, D=Dd), b.head_major(b.xq))  # (S, K, H, Q, P)
        # chunk states, transposed: St[g] = B_g^T (w Xdt)_g, (N, R*P) per chunk
        xw = b.xw()
        St = stack_groups([torch.bmm(b.group(b.Bq, g).transpose(1, 2), b.group(xw, g)) for g in range(G)], 0)
        St = St.view(G, S, c1 - c0, N, R, P)
        del xw
        # passing: the state entering chunk c, into Hts[:, :, c] or this block's own buffer (cpu_passing.py)
        dest, hoff = (Hts, c0) if keep else (k.xq.new_empty(G, S, c1 - c0, N, R, P), 0)
        for ca, cb in k.runs(c0, c1):
            if k.first[ca]:
                carry = k.new_carry(init_t, ca)
            pass_fwd(St, b.dec4, dest, carry, ca - c0, cb - c0, hoff)
            if k.last[cb - 1]:
                k.state_slot(finals, cb - 1).copy_(carry)
        # inter-chunk (token layout): Z = C_i H_c, per group (Q, N) x (N, R*P)
        Hb = dest[:, :, hoff:hoff + c1 - c0]
        Z = stack_groups([torch.bmm(b.group(b.Cq, g), b.state_mats(Hb, g)) for g in range(G)], 2)
        Z = Z.view(S, c1 - c0, Q, H, P)
        if k.D is not None and Dd is None:
            y_intra.addcmul_(b.xq.permute(0, 1, 3, 2, 4), k.D[:, None, :])
        # y_pre = exp(s_i) Z + Y_intra, y = y_pre silu(z): one pass into y (cpu_output.py), or torch
        if not cpu_output.block_output(Z, b.e, y_intra, k.zq, y, ypre, c0):
            yb = Z.mul_(b.e[..., None]).add_(y_intra.permute(0, 1, 3, 2, 4))
            if b.zq is None:
                y[:, c0:c1] = yb
            else:
                if ypre is not None:
                    ypre[:, c0:c1] = yb
                torch.mul(yb, torch.nn.functional.silu(b.zq), out=y[:, c0:c1])
    y = lay.unpack(y.view(S, Cs * Q, H, P))                                         # (b, L, H, P)
    ypre = None if ypre is None else lay.unpack(ypre.view(S, Cs * Q, H, P))
    return y, k.state_untransposed(finals), flat, ypre


# ---- torch.library registration: the CPU path is the custom ops parazoo::ssd_chunked / ssd_chunked_bwd, so
# torch.compile traces through it (fullgraph too) instead of breaking the graph at its C loops ----------------

@torch.library.custom_op("parazoo::ssd_chunked", mutates_args=())
def _ssd_chunked_op(x: torch.Tensor, dtp: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: Optional[torch.Tensor], z: Optional[torch.Tensor], initial_states: Optional[torch.Tensor],
                    cu_seqlens: Optional[torch.Tensor], Q: int, keep: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> y (b, L, H, P) and finals (n, H, P, N) in the compute dtype; with ``keep`` the flat states buffer and,
    with z, y_pre (else empty placeholders)."""
    k = SSDChunks(x, dtp, A, B, C, D, make_layout(x.shape[0], x.shape[1], Q, cu_seqlens, x.device), z)
    with torch.autocast(x.device.type, enabled=False):                              # matmuls in the compute dtype
        y, finals, flat, ypre = _forward(k, initial_states, keep)
    empty = lambda: x.new_empty(0, dtype=k.cdt)                                     # noqa: E731 (outputs may not alias)
    return y.contiguous(), finals, empty() if flat is None else flat, empty() if ypre is None else ypre.contiguous()


@_ssd_chunked_op.register_fake
def _(x, dtp, A, B, C, D, z, initial_states, cu_seqlens, Q, keep):
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    cdt = compute_dtype(x.dtype)
    n = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    flat = states_capacity(b, L, Q, n, cu_seqlens is not None, G, N, H, P) if keep else 0
    return (x.new_empty(x.shape, dtype=cdt), x.new_empty((n, H, P, N), dtype=cdt), x.new_empty(flat, dtype=cdt),
            x.new_empty(x.shape if keep and z is not None else (0,), dtype=cdt))


@torch.library.custom_op("parazoo::ssd_chunked_bwd", mutates_args=())
def _ssd_chunked_bwd_op(dy: torch.Tensor, dfinal: Optional[torch.Tensor], x: torch.Tensor, dtp: torch.Tensor,
                        A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                        z: Optional[torch.Tensor], initial_states: Optional[torch.Tensor],
                        cu_seqlens: Optional[torch.Tensor], Q: int, flat: torch.Tensor, ypre: torch.Tensor
                        ) -> list[torch.Tensor]:
    """Gradients of x, dt', A, B, C, D, z, initial_states (empty placeholders for absent inputs); ypre is the
    forward's ungated y (y itself without z)."""
    from .cpu_bwd import ssd_chunked_backward

    dz = None
    if z is not None:                                                               # y = y_pre silu(z)
        dy, dz = cpu_output.gate_backward(dy, ypre, z)
        dz = dz.to(z.dtype)
    k = SSDChunks(x, dtp, A, B, C, D, make_layout(x.shape[0], x.shape[1], Q, cu_seqlens, x.device))
    with torch.autocast(x.device.type, enabled=False):
        dx, ddt, dA, dB, dC, dD, dinit = ssd_chunked_backward(k, states_view(flat, k), dy, ypre, dfinal,
                                                              initial_states is not None)
    grads = (dx.to(x.dtype), ddt.to(dtp.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
             None if D is None else (dD.sum(-1) if D.dim() == 1 else dD).to(D.dtype), dz,
             None if dinit is None else dinit.to(initial_states.dtype))
    return [x.new_empty(0) if g is None else g.contiguous() for g in grads]


@_ssd_chunked_bwd_op.register_fake
def _(dy, dfinal, x, dtp, A, B, C, D, z, initial_states, cu_seqlens, Q, flat, ypre):
    return [x.new_empty(0) if t is None else t.new_empty(t.shape) for t in (x, dtp, A, B, C, D, z, initial_states)]


def _setup_context(ctx, inputs, output):
    x, dtp, A, B, C, D, z, initial_states, cu_seqlens, Q, keep = inputs
    y, _, flat, ypre = output
    # the backward reads y_pre (its ds_i = dY_i . (y_pre_i - D x_i)): without z it is y itself, saved as an
    # output (as mamba_ssm's chunk scan does): modifying y in place then fails the backward
    ctx.save_for_backward(x, dtp, A, B, C, D, z, initial_states, cu_seqlens, flat, y if z is None else ypre)
    ctx.Q = Q
    ctx.mark_non_differentiable(flat, ypre)
    ctx.set_materialize_grads(False)    # no zero-filled gradients of the states buffer (25 MB at the bench shape)


def _autograd_backward(ctx, dy, dfinal, _dflat, _dypre):
    x, dtp, A, B, C, D, z, initial_states, cu_seqlens, flat, ypre = ctx.saved_tensors
    if flat.numel() == 0 and x.numel() > 0:
        raise RuntimeError("ssd_scan: backward needs the forward's chunk states; internal error")
    if dy is None:                                                                  # only the final states were used
        dy = torch.zeros_like(ypre)
    grads = _ssd_chunked_bwd_op(dy, dfinal, x, dtp, A, B, C, D, z, initial_states, cu_seqlens, ctx.Q, flat, ypre)
    ins = (x, dtp, A, B, C, D, z, initial_states)
    return (*[g if t is not None else None for g, t in zip(grads, ins)], None, None, None)


_ssd_chunked_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def ssd_chunked(x, dtp, A, B, C, D, z, initial_states, cu_seqlens, Q: int):
    """x: (b, L, H, P); dtp: (b, L, H) preprocessed dt'; A: (H,); B, C: (b, L, G, N);
    D: (H,) | (H, P) | None; z: (b, L, H, P) | None; initial_states: (n_seqs, H, P, N) | None;
    cu_seqlens as ssd_scan's; Q the chunk size. Returns y (b, L, H, P) in x.dtype and final states
    (n_seqs, H, P, N) in the compute dtype."""
    tensors = (x, dtp, A, B, C, D, z, initial_states)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, final, _, _ = _ssd_chunked_op(x, dtp, A, B, C, D, z, initial_states, cu_seqlens, Q, keep)
    return y.to(x.dtype), final
