"""Pure-torch selective scan, used when no C compiler is available (and for non-CPU tensors).

Same algorithm and equations as ``cpu_kernel`` (see its docstring), written with torch ops:
the time axis is cut into chunks of CHUNK steps; inside a chunk the decays
a = exp(dl A) and inputs dl u B are built at once, vectorised over (batch, dim, N), so the only
per-step work is h = a_t * h + b_t. Peak extra memory is a few (batch, dim, CHUNK, N) tensors.
The backward recomputes each chunk's states from the checkpoints and runs the reverse scan
g_t = dy_t C_t + a_{t+1} g_{t+1} chunk by chunk from the end.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._seqs import seq_meta

__all__ = ["selective_scan_fwd", "selective_scan_bwd", "CHUNK"]

CHUNK = 32


def _dtype(*ts):
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _per_channel(X: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, G, N, K) -> (b, dim, N, K) view-or-copy: channel d reads group d // (dim // G)."""
    G = X.shape[1]
    return X.unsqueeze(2).expand(X.shape[0], G, dim // G, *X.shape[2:]).reshape(X.shape[0], dim, *X.shape[2:])


def _group_sum(X: torch.Tensor, G: int) -> torch.Tensor:
    """(b, dim, N, K) -> (b, G, N, K): sum over the channels of each group."""
    b, dim = X.shape[:2]
    return X.reshape(b, G, dim // G, *X.shape[2:]).sum(2)


def _chunk_inputs(u, delta, A, B, C, delta_bias, softplus, t0, t1, dt):
    """dl (b, d, K), decay a (b, d, K, N), input b (b, d, K, N), per-channel B, C (b, d, N, K)."""
    dim = u.shape[1]
    x = u[:, :, t0:t1].to(dt)
    dl = delta[:, :, t0:t1].to(dt)
    if delta_bias is not None:
        dl = dl + delta_bias.to(dt)[:, None]
    if softplus:
        dl = F.softplus(dl)
    Bc = _per_channel(B[..., t0:t1].to(dt), dim)
    Cc = _per_channel(C[..., t0:t1].to(dt), dim)
    a = torch.exp(dl[..., None] * A.to(dt)[:, None, :])              # (b, d, K, N)
    bb = (dl * x)[..., None] * Bc.transpose(-1, -2)                   # (b, d, K, N)
    return x, dl, a, bb, Bc, Cc


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, cu_seqlens, need_ckpt):
    dt = _dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, L = u.shape
    N = A.shape[1]
    reset, end_id, nseq = (m.tolist() if isinstance(m, torch.Tensor) else m for m in seq_meta(cu_seqlens, L, "cpu"))
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
        x, dl, a, bb, Bc, Cc = _chunk_inputs(u, delta, A, B, C, delta_bias, softplus, t0, t1, dt)
        for t in range(t0, t1):
            k = t - t0
            h = bb[:, :, k] if reset[t] else torch.addcmul(bb[:, :, k], a[:, :, k], h)
            H[:, :, k] = h
            if end_id[t] >= 0:
                last[:, end_id[t]] = h
        yc = torch.einsum("bdkn,bdnk->bdk", H[:, :, : t1 - t0], Cc)
        if D is not None:
            yc = yc + D.to(dt)[:, None] * x
        if z is not None:
            yc = yc * F.silu(z[:, :, t0:t1].to(dt))
        y[:, :, t0:t1] = yc
    return y, last.view(batch * nseq, dim, N), ckpt


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, softplus, cu_seqlens, ckpt):
    dt = _dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    reset, end_id, nseq = (m.tolist() if isinstance(m, torch.Tensor) else m for m in seq_meta(cu_seqlens, L, "cpu"))
    nck = -(-L // CHUNK)
    A_ = A.to(dt)
    dlast_ = dlast.to(dt).view(batch, nseq, dim, N) if dlast is not None else None
    du = u.new_empty(batch, dim, L, dtype=dt)
    ddelta = torch.empty_like(du)
    dz = torch.empty_like(du) if z is not None else None
    dB = u.new_empty(B.shape, dtype=dt)
    dC = u.new_empty(C.shape, dtype=dt)
    dA = u.new_zeros(dim, N, dtype=dt)
    dD = u.new_zeros(dim, dtype=dt)
    g = u.new_zeros(batch, dim, N, dtype=dt)
    H = u.new_empty(batch, dim, CHUNK, N, dtype=dt)
    G = u.new_empty(batch, dim, CHUNK, N, dtype=dt)
    for c in range(nck - 1, -1, -1):
        t0, t1 = c * CHUNK, min(L, (c + 1) * CHUNK)
        K = t1 - t0
        x, dl, a, bb, Bc, Cc = _chunk_inputs(u, delta, A, B, C, delta_bias, softplus, t0, t1, dt)
        rs = torch.tensor(reset[t0:t1], dtype=torch.bool, device=u.device)
        a = a.masked_fill(rs[None, None, :, None], 0.0)                 # a reset cuts the history
        h = ckpt[:, :, c].to(dt)
        Hprev = u.new_empty(batch, dim, K, N, dtype=dt)
        for k in range(K):
            Hprev[:, :, k] = h
            h = torch.addcmul(bb[:, :, k], a[:, :, k], h)
            H[:, :, k] = h
        Hc = H[:, :, :K]
        go = dout[:, :, t0:t1].to(dt)
        dy = go
        if z is not None:
            zc = z[:, :, t0:t1].to(dt)
            sz = torch.sigmoid(zc)
            ypre = torch.einsum("bdkn,bdnk->bdk", Hc, Cc)
            if D is not None:
                ypre = ypre + D.to(dt)[:, None] * x
            dz[:, :, t0:t1] = go * ypre * sz * (1 + zc * (1 - sz))
            dy = go * zc * sz
        if D is not None:
            dD += (dy * x).sum((0, 2))
        dyC = dy[..., None] * Cc.transpose(-1, -2)                       # (b, d, K, N)
        for k in range(K - 1, -1, -1):                                   # reverse scan in the chunk
            t = t0 + k
            if dlast_ is not None and end_id[t] >= 0:
                g = g + dlast_[:, end_id[t]]
            g = g + dyC[:, :, k]
            G[:, :, k] = g
            g = g * a[:, :, k]
        Gc = G[:, :, :K]
        aH = a * Hprev                                                   # a_t h_{t-1}, (b, d, K, N)
        Bt = Bc.transpose(-1, -2)
        ddl = (Gc * (aH * A_[:, None, :] + Bt * x[..., None])).sum(-1)  # (b, d, K)
        dA += (Gc * aH * dl[..., None]).sum((0, 2))
        du[:, :, t0:t1] = dl * (Gc * Bt).sum(-1) + (dy * D.to(dt)[:, None] if D is not None else 0)
        dB[..., t0:t1] = _group_sum((Gc * (dl * x)[..., None]).transpose(-1, -2), GB)
        dC[..., t0:t1] = _group_sum((Hc * dy[..., None]).transpose(-1, -2), GC)
        if softplus:
            raw = delta[:, :, t0:t1].to(dt) + (delta_bias.to(dt)[:, None] if delta_bias is not None else 0)
            ddl = ddl * torch.sigmoid(raw)
        ddelta[:, :, t0:t1] = ddl
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz,
            ddelta.sum((0, 2)) if delta_bias is not None else None)
