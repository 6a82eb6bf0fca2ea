"""Recurrent state handling shared by every mixer and the language model.

A mixer's state is a plain ``dict`` of tensors (batch first) plus integer counters, created by
``init_state`` and returned by ``forward``. ``check_state`` validates one before use, so a state
from another batch size or another kind of layer is reported instead of silently broadcast.

Packed sequences (the mamba / mamba2 mixers' ``seq_idx`` / ``cu_seqlens`` keywords): ``mixer_seq_idx``
turns either form into one seq_idx (B, T), mamba_ssm's convention (``parazoo/ops/_seq_idx.py``): the
state restarts wherever it changes along a row, an incoming state applies to a row's tokens of
sequence 0, and the returned state is each row's last sequence's; ``conv_window`` builds that
last sequence's conv window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_state", "state_batch_size", "map_state", "check_mixer_input", "state_dtype", "sub_state",
           "mixer_seq_idx", "conv_window"]


def state_batch_size(state) -> int | None:
    """Batch size of a (possibly nested) state: the first dim of its first tensor."""
    if isinstance(state, torch.Tensor):
        return state.shape[0]
    if isinstance(state, dict):
        for v in state.values():
            b = state_batch_size(v)
            if b is not None:
                return b
    if isinstance(state, (list, tuple)):
        for v in state:
            b = state_batch_size(v)
            if b is not None:
                return b
    return None


def check_state(state, *, batch_size: int, keys, owner: str, name: str = "state") -> dict:
    """Validate a mixer state dict: right type, the expected keys, every tensor batch-first with
    ``batch_size`` rows. Raises ValueError naming what is wrong."""
    if not isinstance(state, dict):
        raise ValueError(f"{owner}: argument {name!r} must be the dict returned by init_state()/forward(), got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    extra = [k for k in state if k not in keys]
    if missing or extra:
        raise ValueError(f"{owner}: argument {name!r} has keys {sorted(state)}, expected {sorted(keys)} "
                         "(a state built by another kind of layer?)")
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] != batch_size:
            raise ValueError(f"{owner}: {name}[{k!r}] was built for batch size {v.shape[0]}, but the input has batch size {batch_size}")
    return state


def map_state(fn, state):
    """Apply ``fn`` to every tensor of a nested state (e.g. to repeat it for beams or streams)."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if isinstance(state, list):
        return [map_state(fn, v) for v in state]
    if isinstance(state, tuple):
        return tuple(map_state(fn, v) for v in state)
    return state


def check_mixer_input(owner: str, x, d_model: int) -> None:
    """Validate a mixer's input x: a floating (B, T, d_model) tensor with T >= 1 (ValueError naming 'x')."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != d_model or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{owner}: argument 'x' must be a floating tensor of shape (B, T, {d_model}), got {got}")
    if x.shape[1] == 0:
        raise ValueError(f"{owner}: argument 'x' has T = 0 tokens (shape {tuple(x.shape)}); expected T >= 1")


def state_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """dtype of a recurrent (scan) state: float32, or float64 when the model runs in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sub_state(state: dict | None, keys) -> dict | None:
    """The entries ``keys`` of a flat state dict (a hybrid mixer's branch state), None for None."""
    return None if state is None else {k: state[k] for k in keys}


def mixer_seq_idx(owner: str, x: torch.Tensor, seq_idx=None, cu_seqlens=None) -> torch.Tensor | None:
    """A mixer's packed-sequence keywords as one checked seq_idx (B, T) int64 on x's device, or None:
    seq_idx as mamba_ssm's Mamba2 takes it (any batch size), or cu_seqlens (flash-attn convention:
    batch 1, int cumulative starts [0, l1, l1 + l2, ..., T]) turned into it (an empty sequence has no
    token, so it leaves no trace). ValueError naming the argument when either is malformed (seq_idx's values,
    >= 0 and non-decreasing, are checked by the ops, which read them on the host anyway)."""
    from parazoo.ops._seq_idx import check_seq_idx
    from parazoo.ops._validate import check_cu_seqlens

    B, T = x.shape[:2]
    if cu_seqlens is not None:
        if seq_idx is not None:
            raise ValueError(f"{owner}: give packed sequences as 'seq_idx' or as 'cu_seqlens', not both")
        check_cu_seqlens(cu_seqlens, T, B, op=owner)
        ends = cu_seqlens[1:].to(device=x.device, dtype=torch.int64)
        seq_idx = torch.searchsorted(ends, torch.arange(T, device=x.device), right=True)[None]   # (1, T)
    if seq_idx is None:
        return None
    check_seq_idx(seq_idx, B, T, x.device, owner)
    return seq_idx


def conv_window(xs: torch.Tensor, prev: torch.Tensor | None, d_conv: int,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """The conv state after a chunk: the last d_conv conv inputs (B, C, d_conv), oldest first, of the
    incoming window ``prev`` (B, C, d_conv) (zeros when None) followed by xs (B, C, T). With seq_idx
    (B, T), only those of each row's last sequence: zeros before it, and ``prev`` only where the whole
    row is one sequence of index 0 (the sequence the incoming state belongs to)."""
    T = xs.shape[-1]
    hist = xs if prev is None else torch.cat([prev, xs], dim=-1)
    if hist.shape[-1] < d_conv:                                 # T < d_conv from a zero state
        hist = F.pad(hist, (d_conv - hist.shape[-1], 0))
    window = hist[:, :, -d_conv:]
    if seq_idx is not None:
        start = (seq_idx != seq_idx[:, -1:]).sum(1)            # (B,) first token of each row's last sequence
        keep_prev = (start == 0) & (seq_idx[:, 0] == 0)
        t = torch.arange(T - d_conv, T, device=xs.device)[None]   # (1, d_conv) time step of each column
        keep = (t >= start[:, None]) | ((t < 0) & keep_prev[:, None])
        window = window * keep[:, None, :].to(window.dtype)
    return window.contiguous()
