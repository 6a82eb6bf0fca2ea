"""Selective copying (Mamba paper, Gu & Dao 2023, section 4.1.1).

Vocabulary V (16 in the paper): token 0 is noise, token V-1 the marker, data tokens lie in
[1, V-1). An input of length T is a region of T - M tokens, all noise except M data tokens
(M = 16) at random positions (kept in order), followed by M markers:

    input_ids = [n n d_1 n d_2 n ... n d_M n] [m m ... m]
    labels    = -100 over the region;   labels[T - M + i] = d_{i+1}  (i = 0..M-1)

The model must copy the data tokens in order after the marker; the positions of the data are
random, so a time-invariant convolution cannot solve it (the point of selectivity).
"""
from __future__ import annotations

import numpy as np

from .base import IGNORE_INDEX
from .synthetic import SyntheticDataModule

__all__ = ["SelectiveCopying", "selective_copying_examples"]


def selective_copying_examples(n: int, seq_len: int, num_tokens: int, vocab_size: int,
                               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n examples -> (input_ids (n, seq_len), labels (n, seq_len)), int64."""
    T, M, V = seq_len, num_tokens, vocab_size
    region = T - M
    rows = np.arange(n)[:, None]
    pos = np.sort(np.argsort(rng.random((n, region)), axis=1)[:, :M], axis=1)   # (n, M) increasing
    data = rng.integers(1, V - 1, size=(n, M))
    x = np.zeros((n, T), dtype=np.int64)
    x[rows, pos] = data
    x[:, region:] = V - 1
    labels = np.full((n, T), IGNORE_INDEX, dtype=np.int64)
    labels[:, region:] = data
    return x, labels


class SelectiveCopying(SyntheticDataModule):
    """Configs: ``{"seq_len": T[, "num_examples": n]}`` (T counts the region and the M markers).
    The paper's setting is vocab 16, 16 data tokens; test configs may be longer than training."""

    def __init__(self, train_configs: list[dict] | None = None, test_configs: list[dict] | None = None,
                 vocab_size: int = 16, num_tokens: int = 16, batch_size: int = 64, num_train_examples: int = 20000,
                 num_test_examples: int = 1000, seed: int = 0, num_workers: int = 0):
        if not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f"SelectiveCopying: argument 'num_tokens' must be a positive int, got {num_tokens!r}")
        if not isinstance(vocab_size, int) or vocab_size < 3:
            raise ValueError(f"SelectiveCopying: argument 'vocab_size' must be an int >= 3 (noise, marker, data), got {vocab_size!r}")
        self.num_tokens = num_tokens
        default = [{"seq_len": 256}]
        super().__init__(vocab_size, default if train_configs is None else train_configs,
                         default if test_configs is None else test_configs, batch_size,
                         num_train_examples, num_test_examples, seed, num_workers)

    def check_config(self, arg, i, cfg):
        if cfg["seq_len"] < 2 * self.num_tokens:
            raise ValueError(f"SelectiveCopying: {arg}[{i}] = {cfg}: seq_len must be at least 2*num_tokens = "
                             f"{2 * self.num_tokens} (a region holding the data, then the markers)")

    def generate(self, cfg, n, rng):
        return selective_copying_examples(n, cfg["seq_len"], self.num_tokens, self._vocab_size, rng)
