"""Pure-torch scan core, used when no C compiler is available (and for non-CPU tensors).

Same interface, equations and checkpoint format as the C core in ``cpu_kernel`` (see its
docstring); dl and the gate come precomputed from ``_pointwise``. The time axis is cut into
chunks of CHUNK steps; inside a chunk the decays a = exp(dl A) and inputs dl u B are built at
once, vectorised over (batch, dim, N), so the only per-step work is h = a_t * h + b_t. Peak extra
memory is a few (batch, dim, CHUNK, N) tensors. The backward recomputes each chunk's states from
the checkpoints and runs the reverse scan g_t = dy_t C_t + a_{t+1} g_{t+1} chunk by chunk from the end.
At a sequence start (``_seqs``) the state is replaced by the sequence's h0 row and nothing flows back across
it: g there, times a_t, is that row's gradient.
"""
from __future__ import annotations

import torch

__all__ = ["scan_fwd", "scan_bwd", "CHUNK"]

CHUNK = 32


def _per_channel(X: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, G, N, K) -> (b, dim, N, K): channel d reads group d // (dim // G)."""
    b, G = X.shape[:2]
    return X.unsqueeze(2).expand(b, G, dim // G, *X.shape[2:]).reshape(b, dim, *X.shape[2:])


def _group_sum(X: torch.Tensor, G: int) -> torch.Tensor:
    """(b, dim, N, K) -> (b, G, N, K): sum over the channels of each group."""
    b, dim = X.shape[:2]
    return X.reshape(b, G, dim // G, *X.shape[2:]).sum(2)


def _chunk(u, dl, A, B, C, zero_starts, t0, t1, dt):
    """x, dl (b, d, K); decay a (b, d, K, N) (0 at the starts zero_starts (L,) marks); input bb (b, d, K, N);
    B, C (b, d, K, N)."""
    dim = u.shape[1]
    x, dlc = u[:, :, t0:t1].to(dt), dl[:, :, t0:t1]
    Bc = _per_channel(B[..., t0:t1].to(dt), dim).transpose(-1, -2)
    Cc = _per_channel(C[..., t0:t1].to(dt), dim).transpose(-1, -2)
    a = torch.exp(dlc[..., None] * A.to(dt)[:, None, :])
    if zero_starts is not None:                                        # a start from a zero state cuts the history
        a = a.masked_fill(zero_starts[t0:t1][None, None, :, None], 0.0)
    bb = (dlc * x)[..., None] * Bc
    return x, dlc, a, bb, Bc, Cc


def _h0_rows(h0, batch, nseq, dim, N, dt, like):
    """h0 (batch * nseq, d, N) or None -> (b, nseq, d, N) in dt (zeros for None)."""
    if h0 is None:
        return like.new_zeros(batch, nseq, dim, N, dtype=dt)
    return h0.to(dt).view(batch, nseq, dim, N)


def scan_fwd(u, dl, A, B, C, D, gate, h0, start_id, end_id, nseq, need_ckpt, dt):
    """-> y (b, d, L), last (b, nseq, d, N), ckpt (b, d, n_chunks, N) or empty; h0 (b * nseq, d, N) or None."""
    batch, dim, L = u.shape
    N = A.shape[1]
    ends, starts = end_id.tolist(), start_id.tolist()
    h0s = _h0_rows(h0, batch, nseq, dim, N, dt, u)
    zero_starts = start_id >= 0 if h0 is None else None
    nck = -(-L // CHUNK)
    y = u.new_empty(batch, dim, L, dtype=dt)
    last = u.new_zeros(batch, nseq, dim, N, dtype=dt)
    ckpt = u.new_empty(batch, dim, nck, N, dtype=dt) if need_ckpt else u.new_empty(0, dtype=dt)
    h = u.new_zeros(batch, dim, N, dtype=dt)
    H = u.new_empty(batch, dim, CHUNK, N, dtype=dt)
    for c in range(nck):
        t0, t1 = c * CHUNK, min(L, (c + 1) * CHUNK)
        if need_ckpt:
            ckpt[:, :, c] = h
        x, _, a, bb, _, Cc = _chunk(u, dl, A, B, C, zero_starts, t0, t1, dt)
        for t in range(t0, t1):
            if starts[t] >= 0:                                             # the sequence's h_{-1}
                h = h0s[:, starts[t]]
            h = torch.addcmul(bb[:, :, t - t0], a[:, :, t - t0], h)
            H[:, :, t - t0] = h
            if ends[t] >= 0:
                last[:, ends[t]] = h
        yc = (H[:, :, : t1 - t0] * Cc).sum(-1)
        if D is not None:
            yc = yc + D.to(dt)[:, None] * x
        y[:, :, t0:t1] = yc if gate is None else yc * gate[:, :, t0:t1]
    return y, last, ckpt


def scan_bwd(u, dl, A, B, C, D, dy, need_ypre, start_id, end_id, nseq, ckpt, dlast, h0, dt):
    """-> du, ddl, dA (d, N), dB, dC (b, G, N, L), dD (d,), ypre (b, d, L) or None, dh0 (b * nseq, d, N) or None.

    At a start, g after the step is a_t g_t = d h_{-1} of that sequence, and the reverse scan goes on from 0."""
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    ends, starts = end_id.tolist(), start_id.tolist()
    h0s = _h0_rows(h0, batch, nseq, dim, N, dt, u)
    dh0 = torch.zeros_like(h0s) if h0 is not None else None
    zero_starts = start_id >= 0 if h0 is None else None
    nck = -(-L // CHUNK)
    A_ = A.to(dt)
    dlast_ = dlast.to(dt).view(batch, nseq, dim, N) if dlast is not None else None
    du = u.new_empty(batch, dim, L, dtype=dt)
    ddl = torch.empty_like(du)
    ypre = torch.empty_like(du) if need_ypre else None
    dB, dC = u.new_empty(B.shape, dtype=dt), u.new_empty(C.shape, dtype=dt)
    dA, dD = u.new_zeros(dim, N, dtype=dt), u.new_zeros(dim, dtype=dt)
    g = u.new_zeros(batch, dim, N, dtype=dt)
    for c in range(nck - 1, -1, -1):
        t0, t1 = c * CHUNK, min(L, (c + 1) * CHUNK)
        K = t1 - t0
        x, dlc, a, bb, Bc, Cc = _chunk(u, dl, A, B, C, zero_starts, t0, t1, dt)
        h = ckpt[:, :, c].to(dt)
        Hprev = u.new_empty(batch, dim, K, N, dtype=dt)                  # h_{t-1}
        H = u.new_empty(batch, dim, K, N, dtype=dt)                      # h_t
        for k in range(K):
            if starts[t0 + k] >= 0:
                h = h0s[:, starts[t0 + k]]
            Hprev[:, :, k] = h
            h = torch.addcmul(bb[:, :, k], a[:, :, k], h)
            H[:, :, k] = h
        dyc = dy[:, :, t0:t1]
        dyC = dyc[..., None] * Cc                                        # (b, d, K, N)
        Gr = u.new_empty(batch, dim, K, N, dtype=dt)
        for k in range(K - 1, -1, -1):                                   # reverse scan in the chunk
            if dlast_ is not None and ends[t0 + k] >= 0:
                g = g + dlast_[:, ends[t0 + k]]
            g = g + dyC[:, :, k]
            Gr[:, :, k] = g
            g = g * a[:, :, k]
            if starts[t0 + k] >= 0:                                      # d h_{-1}; nothing flows further back
                if dh0 is not None:
                    dh0[:, starts[t0 + k]] = g
                g = torch.zeros_like(g)
        aH = a * Hprev                                                   # a_t h_{t-1}
        ddl[:, :, t0:t1] = (Gr * (aH * A_[:, None, :] + Bc * x[..., None])).sum(-1)
        dA += (Gr * aH * dlc[..., None]).sum((0, 2))
        du[:, :, t0:t1] = dlc * (Gr * Bc).sum(-1) + (dyc * D.to(dt)[:, None] if D is not None else 0)
        dB[..., t0:t1] = _group_sum((Gr * (dlc * x)[..., None]).transpose(-1, -2), GB)
        dC[..., t0:t1] = _group_sum((H * dyc[..., None]).transpose(-1, -2), GC)
        if D is not None:
            dD += (dyc * x).sum((0, 2))
        if need_ypre:
            yp = (H * Cc).sum(-1)
            ypre[:, :, t0:t1] = yp + D.to(dt)[:, None] * x if D is not None else yp
    return du, ddl, dA, dB, dC, dD, ypre, (dh0.view(batch * nseq, dim, N) if dh0 is not None else None)
