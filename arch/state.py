"""Recurrent state handling shared by every mixer and the language model.

A mixer's state is a plain ``dict`` of tensors (batch first) plus integer counters, created by
``init_state`` and returned by ``forward``. ``check_state`` validates one before use, so a state
from another batch size or another kind of layer is reported instead of silently broadcast.

Packed sequences (the mamba / mamba2 mixers' keywords), checked by ``mixer_packing``, in two forms:
- ``seq_idx`` (B, T), mamba_ssm's Mamba-2 convention (``parazoo/ops/_seq_idx.py``): the state restarts
  wherever it changes along a row, an incoming state (one per row) applies to a row's tokens of
  sequence 0, and the returned state is each row's last sequence's;
- ``cu_seqlens`` (batch 1, flash-attn convention): states are per sequence, (n_seqs, ...) in and out,
  so a packed prefill of many documents continues each from its own state and leaves each one's state
  for decoding them as a batch (as serving engines pack prompts).
``conv_window`` builds the conv window of either.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_state", "state_batch_size", "map_state", "check_mixer_input", "state_dtype", "sub_state",
           "mixer_packing", "conv_window"]


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


def check_state(state, *, batch_size: int, keys, owner: str, name: str = "state",
                rows: str = "the input has batch size") -> dict:
    """Validate a mixer state dict: right type, the expected keys, every tensor batch-first with
    ``batch_size`` rows (``rows`` says what sets that number). Raises ValueError naming what is wrong."""
    if not isinstance(state, dict):
        raise ValueError(f"{owner}: argument {name!r} must be the dict returned by init_state()/forward(), got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    extra = [k for k in state if k not in keys]
    if missing or extra:
        raise ValueError(f"{owner}: argument {name!r} has keys {sorted(state)}, expected {sorted(keys)} "
                         "(a state built by another kind of layer?)")
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] != batch_size:
            raise ValueError(f"{owner}: {name}[{k!r}] was built for batch size {v.shape[0]}, but {rows} {batch_size}")
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


def mixer_packing(owner: str, x: torch.Tensor, seq_idx=None, cu_seqlens=None) -> dict:
    """A mixer's packed-sequence keywords, checked, as the one keyword its ops take: {} (no packing),
    {"seq_idx": (B, T) int} as mamba_ssm's Mamba2 takes it (any batch size), or {"cu_seqlens": (n_seqs + 1,)
    int64 on x's device} (flash-attn convention: batch 1, cumulative starts [0, l1, l1 + l2, ..., T]).
    ValueError naming the argument when either is malformed (seq_idx's values, >= 0 and non-decreasing, are
    checked by the ops, which read them on the host anyway)."""
    from parazoo.ops._seq_idx import check_seq_idx
    from parazoo.ops._validate import check_cu_seqlens

    B, T = x.shape[:2]
    if cu_seqlens is not None:
        if seq_idx is not None:
            raise ValueError(f"{owner}: give packed sequences as 'seq_idx' or as 'cu_seqlens', not both")
        check_cu_seqlens(cu_seqlens, T, B, op=owner)
        return {"cu_seqlens": cu_seqlens.to(device=x.device, dtype=torch.int64)}
    if seq_idx is None:
        return {}
    check_seq_idx(seq_idx, B, T, x.device, owner)
    return {"seq_idx": seq_idx}


def state_rows(x: torch.Tensor, packing: dict) -> tuple[int, str]:
    """How many rows a mixer's state has for input x under ``packing`` (``mixer_packing``), and what sets that
    number (for ``check_state``'s message): the batch size, or the number of sequences with cu_seqlens."""
    if "cu_seqlens" in packing:
        return packing["cu_seqlens"].numel() - 1, "cu_seqlens holds n_seqs ="
    return x.shape[0], "the input has batch size"


def conv_window(xs: torch.Tensor, prev: torch.Tensor | None, d_conv: int, *, seq_idx: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """The conv state after a chunk: the last d_conv conv inputs (B, C, d_conv), oldest first, of the
    incoming window ``prev`` (B, C, d_conv) (zeros when None) followed by xs (B, C, T). With seq_idx
    (B, T), only those of each row's last sequence: zeros before it, and ``prev`` only where the whole
    row is one sequence of index 0 (the sequence the incoming state belongs to). With cu_seqlens (xs
    batch 1), one window per sequence, (n_seqs, C, d_conv), from prev[i] (n_seqs, C, d_conv) before
    sequence i's tokens."""
    if cu_seqlens is not None:
        return _seq_windows(xs, prev, d_conv, cu_seqlens)
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


def _seq_windows(xs: torch.Tensor, prev: torch.Tensor | None, d_conv: int, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Per-sequence conv windows (n_seqs, C, d_conv) of a packed row xs (1, C, T): column j of sequence i is the
    input at t = end_i - d_conv + j, taken from xs where t is inside the sequence, else from prev[i] (its column
    d_conv + t - start_i, the window before the sequence) or 0."""
    starts, ends = cu_seqlens[:-1, None], cu_seqlens[1:, None]                     # (n, 1)
    t = ends - d_conv + torch.arange(d_conv, device=xs.device)                     # (n, d_conv)
    window = xs[0][:, t.clamp(min=0)].transpose(0, 1)                              # (n, C, d_conv)
    if prev is None:
        other = window.new_zeros(())
    else:
        col = (d_conv + t - starts).clamp(0, d_conv - 1)                           # (n, d_conv)
        other = prev.gather(2, col[:, None, :].expand(-1, prev.shape[1], -1))
    return torch.where((t >= starts)[:, None, :], window, other).contiguous()
