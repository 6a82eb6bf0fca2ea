"""Synthetic sequence tasks as data modules: the shared machinery.

A task is a list of *configs* (dicts such as ``{"seq_len": 64, "num_kv_pairs": 4}``) for training
and another for testing, so the test set can be longer than training. Each config is generated
with its own seeded numpy generator (seed, split, config index), so the data is identical on
every machine and every rank. Training configs of different lengths are right-padded to the
longest (pad token 0, label -100: a causal model's earlier outputs never see the padding).
Every test config is its own validation slice, reported separately (accuracy per slice).
"""
from __future__ import annotations

import numpy as np
import torch

from .base import IGNORE_INDEX, LMDataModule, TensorPairs

__all__ = ["SyntheticDataModule"]

_SPLITS = {"train": 0, "test": 1}


class SyntheticDataModule(LMDataModule):
    """Subclasses define ``config_keys`` (required keys; ``num_examples`` is always optional),
    ``generate(cfg, n, rng) -> (input_ids (n, T) int64, labels (n, T) int64)`` with numpy, and
    ``slice_name(cfg)``."""

    task = "synthetic"
    required_keys: tuple[str, ...] = ("seq_len",)

    def __init__(self, vocab_size: int, train_configs: list[dict], test_configs: list[dict], batch_size: int,
                 num_train_examples: int, num_test_examples: int, seed: int, num_workers: int = 0):
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        name = type(self).__name__
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"{name}: argument 'vocab_size' must be an int >= 2, got {vocab_size!r}")
        self._vocab_size = vocab_size
        for arg, v in (("num_train_examples", num_train_examples), ("num_test_examples", num_test_examples)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: argument '{arg}' must be a positive int, got {v!r}")
        self.num_train_examples, self.num_test_examples = num_train_examples, num_test_examples
        self.train_configs = self._check_configs("train_configs", train_configs)
        self.test_configs = self._check_configs("test_configs", test_configs)
        names = [self.slice_name(c) for c in self.test_configs]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: argument 'test_configs' has duplicate slices {names}")

    # -------------------------------------------------------------- validation
    def _check_configs(self, arg: str, configs) -> list[dict]:
        name = type(self).__name__
        if not isinstance(configs, (list, tuple)) or not configs:
            raise ValueError(f"{name}: argument '{arg}' must be a non-empty list of dicts, got {configs!r}")
        allowed = set(self.required_keys) | {"num_examples"}
        out = []
        for i, c in enumerate(configs):
            if not isinstance(c, dict):
                raise ValueError(f"{name}: {arg}[{i}] must be a dict with keys {sorted(allowed)}, got {c!r}")
            unknown, missing = sorted(set(c) - allowed), sorted(set(self.required_keys) - set(c))
            if unknown or missing:
                raise ValueError(f"{name}: {arg}[{i}] = {c!r}: unknown keys {unknown}, missing keys {missing}; "
                                 f"expected keys {sorted(allowed)}")
            for k, v in c.items():
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ValueError(f"{name}: {arg}[{i}].{k} must be a positive int, got {v!r}")
            self.check_config(arg, i, c)
            out.append(dict(c))
        return out

    def check_config(self, arg: str, i: int, cfg: dict) -> None:
        """Task-specific checks; raise ValueError naming ``arg[i]``."""

    # -------------------------------------------------------------- task interface
    def generate(self, cfg: dict, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def slice_name(self, cfg: dict) -> str:
        return f"len{cfg['seq_len']}"

    # -------------------------------------------------------------- metadata
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def max_seq_len(self) -> int:
        return max(c["seq_len"] for c in self.train_configs + self.test_configs)

    # -------------------------------------------------------------- data
    def _make(self, split: str, i: int, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
        n = cfg.get("num_examples", self.num_train_examples if split == "train" else self.num_test_examples)
        rng = np.random.default_rng([self.seed, _SPLITS[split], i])
        x, y = self.generate(cfg, n, rng)
        assert x.shape == y.shape == (n, cfg["seq_len"]), (x.shape, y.shape, cfg)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)), torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        T = max(c["seq_len"] for c in self.train_configs)
        xs, ys = [], []
        for i, c in enumerate(self.train_configs):
            x, y = self._make("train", i, c)
            pad = T - x.shape[1]
            xs.append(torch.nn.functional.pad(x, (0, pad), value=0))
            ys.append(torch.nn.functional.pad(y, (0, pad), value=IGNORE_INDEX))
        self.train_set = TensorPairs(torch.cat(xs), torch.cat(ys))
        self.val_sets = {self.slice_name(c): TensorPairs(*self._make("test", i, c)) for i, c in enumerate(self.test_configs)}
