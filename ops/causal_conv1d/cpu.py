"""Causal depthwise conv1d CPU path: the fused C loops of ``cpu_loop`` (float32/float64 CPU tensors
with a C compiler), else torch: F.conv1d(groups=dim) on left-padded input, described here.

Forward: xp = [initial_states or 0 (width-1) | x] per sequence (packed sequences each get their
own left padding, so none sees its predecessor), o = depthwise_conv(xp, weight) + bias,
y = act(o). With o[p] = sum_k w[k] xp[p + k], the backward is two more convolutions:

    do   = dy * act'(o)                           act'(o) = s (1 + o (1 - s)), s = sigmoid(o) for silu
    dxp  = depthwise_conv(pad(do, W-1 both sides), flip(w))   -> dx, dinitial_states
    dw_k = sum_{b,p} do[p] * xp[p + k];   dbias = sum_{b,p} do[p]

All in float32 (float64 for float64 input), results in each input's dtype. Pure torch, so it
also runs on CUDA tensors. ``causal_conv1d_update_torch`` is the decode step (rolling window).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu_loop
from .packing import seq_ids


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _padded(x, initial_states, cu_seqlens, W: int, ct):
    """xp (B, D, Lp) and the index maps; out_pos/x_pos/init_pos are None in the batch case.

    Batch: xp = [init | x], outputs o[:, :, 0:L]. Packed: sequence i sits at xp offset
    cu[i] + i*(W-1): its init at [off, off+W-1), its inputs right after."""
    B, D, L = x.shape
    K = W - 1
    if cu_seqlens is None:
        head = initial_states.to(ct) if initial_states is not None else x.new_zeros((B, D, K), dtype=ct)
        return torch.cat([head, x.to(ct)], dim=-1), None, None, None
    n = cu_seqlens.numel() - 1
    sid = seq_ids(cu_seqlens, L)                                   # (L,)
    t = torch.arange(L, device=x.device)
    x_pos = t + (sid + 1) * K
    out_pos = t + sid * K
    init_pos = (cu_seqlens[:-1].long()[:, None] + torch.arange(n, device=x.device)[:, None] * K
                + torch.arange(K, device=x.device)).reshape(-1)   # (n*K,)
    xp = x.new_zeros((1, D, L + n * K), dtype=ct)
    xp = xp.index_copy(-1, x_pos, x.to(ct))
    if initial_states is not None:
        xp = xp.index_copy(-1, init_pos, initial_states.to(ct).permute(1, 0, 2).reshape(1, D, n * K))
    return xp, out_pos, x_pos, init_pos


def _conv(xp, weight, bias, ct):
    D = weight.shape[0]
    return F.conv1d(xp, weight.to(ct).unsqueeze(1), bias.to(ct) if bias is not None else None, groups=D)


def causal_conv1d_fwd(x, weight, bias, initial_states, cu_seqlens, activation: str) -> torch.Tensor:
    """x (B, D, L) -> y (B, D, L) in x's dtype; activation "" or "silu"."""
    ct = compute_dtype(x)
    y = cpu_loop.conv_fwd(x, weight, bias, initial_states, cu_seqlens, activation, ct)
    if y is not None:
        return y.to(x.dtype)
    xp, out_pos, _, _ = _padded(x, initial_states, cu_seqlens, weight.shape[1], ct)
    o = _conv(xp, weight, bias, ct)                                # (B, D, Lp - W + 1)
    if out_pos is not None:
        o = o.index_select(-1, out_pos)
    if activation:
        o = F.silu(o)
    return o.to(x.dtype)


def causal_conv1d_bwd(dy, x, weight, bias, initial_states, cu_seqlens, activation: str):
    """Returns dx, dweight, dbias (or None), dinitial_states (or None)."""
    ct = compute_dtype(x)
    fused = cpu_loop.conv_bwd(dy, x, weight, bias, initial_states, cu_seqlens, activation, ct)
    if fused is not None:
        dx, dweight, dbias, dinit = fused
        return (dx.to(x.dtype), dweight.to(weight.dtype), None if dbias is None else dbias.to(bias.dtype),
                None if dinit is None else dinit.to(initial_states.dtype))
    B, D, L = x.shape
    W = weight.shape[1]
    xp, out_pos, x_pos, init_pos = _padded(x, initial_states, cu_seqlens, W, ct)
    do = dy.to(ct)
    if activation:
        o = _conv(xp, weight, bias, ct)
        if out_pos is not None:
            o = o.index_select(-1, out_pos)
        s = torch.sigmoid(o)
        do = do * s * (1 + o * (1 - s))
    if out_pos is not None:  # scatter back to the padded-output grid; cross-sequence outputs get 0
        do = do.new_zeros((B, D, xp.shape[-1] - W + 1)).index_copy(-1, out_pos, do)
    Lo = do.shape[-1]
    dxp = F.conv1d(F.pad(do, (W - 1, W - 1)), weight.to(ct).flip(-1).unsqueeze(1), groups=D)  # (B, D, Lp)
    dweight = torch.stack([(do * xp[..., k:k + Lo]).sum(dim=(0, 2)) for k in range(W)], dim=-1).to(weight.dtype)
    dbias = do.sum(dim=(0, 2)).to(bias.dtype) if bias is not None else None
    if x_pos is None:
        dx, dinit = dxp[..., W - 1:], dxp[..., :W - 1].clone()  # clone: outputs must not alias
    else:
        n = cu_seqlens.numel() - 1
        dx = dxp.index_select(-1, x_pos)
        dinit = dxp[0].index_select(-1, init_pos).reshape(D, n, W - 1).permute(1, 0, 2)
    dinit = dinit.contiguous().to(initial_states.dtype) if initial_states is not None else None
    return dx.to(x.dtype).contiguous(), dweight, dbias, dinit


def causal_conv1d_update_torch(x, conv_state, weight, bias, activation: str | None) -> torch.Tensor:
    """Decode step(s): x (B, D) or (B, D, T); conv_state (B, D, S), S >= W-1, rolled in place."""
    ct = compute_dtype(x)
    W = weight.shape[1]
    S = conv_state.shape[-1]
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x                   # (B, D, T)
    T = x3.shape[-1]
    full = torch.cat([conv_state.to(ct), x3.to(ct)], dim=-1)      # (B, D, S + T)
    # windows (B, D, T, W) times weight, summed over taps: for a few new inputs this is far
    # cheaper than F.conv1d, whose per-call set-up dominates at this size (~0.1 ms vs ~40 ms measured)
    windows = full[..., S - (W - 1):].unfold(-1, W, 1)
    y = (windows * weight.to(ct)[:, None, :]).sum(dim=-1)
    if bias is not None:
        y = y + bias.to(ct)[:, None]
    if activation:
        y = F.silu(y)
    conv_state.copy_(full[..., T:])
    y = y.to(x.dtype)
    return y[..., 0] if x.dim() == 2 else y
