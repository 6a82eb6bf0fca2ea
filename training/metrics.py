"""Language-model metrics from summed statistics (so they aggregate exactly over batches/ranks).

Over the scored positions S (labels != -100), with p the model's softmax:
    loss       = -(1/|S|) sum_{t in S} ln p(label_t)           (nats per token)
    perplexity = exp(loss)
    bits/byte  = loss / (ln 2 * bytes_per_token)               (= loss / ln 2 for bytes)
    accuracy   = (1/|S|) sum_{t in S} [argmax p_t = label_t]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data.base import IGNORE_INDEX

__all__ = ["lm_loss", "lm_statistics", "summarise"]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over scored positions. logits (B, T, V), labels (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def lm_statistics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(loss sum, scored count, correct count) as a float64 tensor of 3, for exact aggregation."""
    flat, y = logits.flatten(0, 1).float(), labels.flatten()
    mask = y != IGNORE_INDEX
    loss_sum = F.cross_entropy(flat, y, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((flat.argmax(-1) == y) & mask).sum()
    return torch.stack([loss_sum.double(), mask.sum().double(), correct.double()])


def summarise(stats: torch.Tensor, bytes_per_token: float | None, with_accuracy: bool) -> dict[str, float]:
    """Metrics from summed (loss, count, correct); empty dict when nothing was scored."""
    loss_sum, count, correct = (float(v) for v in stats)
    if count == 0:
        return {}
    loss = loss_sum / count
    out = {"loss": loss, "ppl": math.exp(min(loss, 700.0))}
    if bytes_per_token:
        out["bpb"] = loss / (math.log(2) * bytes_per_token)
    if with_accuracy:
        out["acc"] = correct / count
    return out
