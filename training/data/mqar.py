"""Multi-query associative recall (MQAR), as defined by Zoology (Arora et al. 2023).

Vocabulary V: keys are drawn from [1, V/2), values from [V/2, V); token 0 fills the gaps.
One example of input length T with K key-value pairs is a sequence s of T + 1 tokens:

    s[0:2K]  = k_1 v_1 k_2 v_2 ... k_K v_K            (distinct keys, distinct values)
    the rest = (T + 1 - 2K) // 2 two-token slots; K of them, chosen without replacement with
               power-law probability p(slot j) ∝ a (j+1)^(a-1) (a = power_a, Zoology's 0.01:
               short gaps are likely), hold a query: k_i at the slot's first position and
               its value v_i right after. The queried keys are the K keys in random order.

input_ids = s[:T]; labels[t] = s[t+1] where s[t] is a query key, -100 elsewhere: loss and
accuracy are scored only at the positions after query keys (the model must recall v_i).
"""
from __future__ import annotations

import numpy as np

from .base import IGNORE_INDEX
from .synthetic import SyntheticDataModule

__all__ = ["MQAR", "mqar_examples"]


def mqar_examples(n: int, seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n MQAR examples -> (input_ids (n, seq_len), labels (n, seq_len)), int64."""
    T, K, V = seq_len, num_kv_pairs, vocab_size
    L = T + 1
    ctx, half = 2 * K, V // 2
    slots = (L - ctx) // 2
    rows = np.arange(n)[:, None]
    keys = np.argsort(rng.random((n, half - 1)), axis=1)[:, :K] + 1            # (n, K) in [1, V/2)
    values = np.argsort(rng.random((n, V - half)), axis=1)[:, :K] + half       # (n, K) in [V/2, V)
    s = np.zeros((n, L), dtype=np.int64)
    s[:, 0:ctx:2], s[:, 1:ctx:2] = keys, values
    # K distinct slots, power-law weighted, without replacement (Gumbel top-k).
    logp = np.log(power_a) + (power_a - 1.0) * np.log(np.arange(1, slots + 1, dtype=np.float64))
    score = logp[None, :] + rng.gumbel(size=(n, slots))
    chosen = np.argpartition(-score, K - 1, axis=1)[:, :K]                      # (n, K)
    order = np.argsort(rng.random((n, K)), axis=1)                             # which pair each slot asks
    qpos = ctx + 2 * chosen
    s[rows, qpos] = keys[rows, order]
    s[rows, qpos + 1] = values[rows, order]
    labels = np.full((n, T), IGNORE_INDEX, dtype=np.int64)
    labels[rows, qpos] = s[rows, qpos + 1]
    return s[:, :T], labels


class MQAR(SyntheticDataModule):
    """Zoology's MQAR. Configs: ``{"seq_len": T, "num_kv_pairs": K[, "num_examples": n]}``;
    one validation slice per test config, named ``kv{K}_len{T}``.

    Defaults follow Zoology: vocab 8192, power_a 0.01, train on (64, 4) .. (256, 16) and test on
    the same grid plus longer sequences in the recipes."""

    required_keys = ("seq_len", "num_kv_pairs")

    def __init__(self, train_configs: list[dict] | None = None, test_configs: list[dict] | None = None,
                 vocab_size: int = 8192, power_a: float = 0.01, batch_size: int = 64,
                 num_train_examples: int = 20000, num_test_examples: int = 1000, seed: int = 0,
                 num_workers: int = 0):
        if not 0.0 < float(power_a) <= 1.0:
            raise ValueError(f"MQAR: argument 'power_a' must be in (0, 1], got {power_a!r}")
        self.power_a = float(power_a)
        default = [{"seq_len": 64, "num_kv_pairs": 4}]
        super().__init__(vocab_size, default if train_configs is None else train_configs,
                         default if test_configs is None else test_configs, batch_size,
                         num_train_examples, num_test_examples, seed, num_workers)

    def check_config(self, arg, i, cfg):
        T, K, V = cfg["seq_len"], cfg["num_kv_pairs"], self._vocab_size
        if (T + 1 - 2 * K) // 2 < K:
            raise ValueError(f"MQAR: {arg}[{i}] = {cfg}: seq_len must be at least 4*num_kv_pairs - 1 = {4 * K - 1} "
                             f"to hold {K} pairs and {K} queries")
        if K > V // 2 - 1 or K > V - V // 2:
            raise ValueError(f"MQAR: {arg}[{i}] = {cfg}: num_kv_pairs {K} exceeds the distinct keys "
                             f"{V // 2 - 1} of vocab_size {V}")

    def slice_name(self, cfg):
        return f"kv{cfg['num_kv_pairs']}_len{cfg['seq_len']}"

    def generate(self, cfg, n, rng):
        return mqar_examples(n, cfg["seq_len"], cfg["num_kv_pairs"], self._vocab_size, self.power_a, rng)
