"""Induction heads (Olsson et al. 2022; the Mamba paper's setting, section 4.1.2).

Vocabulary V (16 in the paper): token V-1 is the trigger, the others are drawn uniformly from
[0, V-1). An input of length T: random tokens, with the trigger at one random position p
(p <= T - 3) followed by a token X, and the trigger again as the last token:

    input_ids = [... t X ... t];   labels = -100 except labels[T-1] = X

The model must recall what followed the trigger. Train at one length (256 in the paper), test at
longer ones (test configs as a list).
"""
from __future__ import annotations

import numpy as np

from .base import IGNORE_INDEX
from .synthetic import SyntheticDataModule

__all__ = ["InductionHeads", "induction_heads_examples"]


def induction_heads_examples(n: int, seq_len: int, vocab_size: int,
                             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n examples -> (input_ids (n, seq_len), labels (n, seq_len)), int64."""
    T, V = seq_len, vocab_size
    rows = np.arange(n)
    x = rng.integers(0, V - 1, size=(n, T))
    p = rng.integers(0, T - 2, size=n)             # p + 1 <= T - 2: X never overlaps the last trigger
    target = x[rows, p + 1].copy()
    x[rows, p] = V - 1
    x[:, T - 1] = V - 1
    labels = np.full((n, T), IGNORE_INDEX, dtype=np.int64)
    labels[:, T - 1] = target
    return x.astype(np.int64), labels


class InductionHeads(SyntheticDataModule):
    """Configs: ``{"seq_len": T[, "num_examples": n]}``; one validation slice per test length."""

    def __init__(self, train_configs: list[dict] | None = None, test_configs: list[dict] | None = None,
                 vocab_size: int = 16, batch_size: int = 64, num_train_examples: int = 20000,
                 num_test_examples: int = 1000, seed: int = 0, num_workers: int = 0):
        if not isinstance(vocab_size, int) or vocab_size < 3:
            raise ValueError(f"InductionHeads: argument 'vocab_size' must be an int >= 3, got {vocab_size!r}")
        super().__init__(vocab_size, [{"seq_len": 256}] if train_configs is None else train_configs,
                         [{"seq_len": 256}, {"seq_len": 512}, {"seq_len": 1024}] if test_configs is None else test_configs, batch_size,
                         num_train_examples, num_test_examples, seed, num_workers)

    def check_config(self, arg, i, cfg):
        if cfg["seq_len"] < 4:
            raise ValueError(f"InductionHeads: {arg}[{i}] = {cfg}: seq_len must be at least 4")

    def generate(self, cfg, n, rng):
        return induction_heads_examples(n, cfg["seq_len"], self._vocab_size, rng)
