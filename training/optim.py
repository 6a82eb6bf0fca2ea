"""AdamW with weight-decay groups, and the warmup + cosine learning-rate schedule.

Decay groups (mamba_ssm / nanoGPT convention): a parameter is decayed iff it has ndim >= 2 and
is not marked ``p._no_weight_decay = True`` (embeddings, Mamba's A_log and D, ...); norms' gains
and all biases (ndim < 2) are never decayed.

Schedule, multiplier of the peak learning rate at optimizer step s (0-based), warmup W, decay
horizon S, floor r = min_lr_ratio:
    s < W:      (s + 1) / W
    W <= s < S: r + (1 - r) * (1 + cos(pi * (s - W) / (S - W))) / 2
    s >= S:     r
"""
from __future__ import annotations

import math

import torch

__all__ = ["build_adamw", "param_groups", "warmup_cosine"]


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(module: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8):
    kwargs = {}
    if any(p.is_cuda for p in module.parameters()):
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=tuple(betas), eps=eps, **kwargs)


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_steps or decay_steps <= warmup_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
