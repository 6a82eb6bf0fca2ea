"""Recurrent state handling shared by every mixer and the language model.

A mixer's state is a plain ``dict`` of tensors (batch first) plus integer counters, created by
``init_state`` and returned by ``forward``. ``check_state`` validates one before use, so a state
from another batch size or another kind of layer is reported instead of silently broadcast.
"""
from __future__ import annotations

import torch

__all__ = ["check_state", "state_batch_size", "map_state", "check_mixer_input", "state_dtype", "sub_state"]


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
