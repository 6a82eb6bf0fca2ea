"""Throughput: tokens/s, samples/s, step time and peak memory of training.

Measured per optimizer step as the wall-clock time between the ends of consecutive training
batches (so data loading, forward, backward, clipping and the optimizer step all count), over
all ranks (tokens = B * T * world_size). Peak memory: ``torch.cuda.max_memory_allocated`` on
GPU, the process's peak resident set size (ru_maxrss) on CPU. Logged as
``perf/{tokens_per_s,samples_per_s,step_time_s,peak_mem_mb}`` every ``log_every_n_steps``; the steps after ``skip_steps``
(warm-up) are kept in ``history`` for benchmarks, and ``summary()`` averages them.
"""
from __future__ import annotations

import resource
import statistics
import sys
import time

import lightning as L
import torch

from ..loggers import log_step_metrics, should_log_step

__all__ = ["Throughput", "peak_memory_mb", "summarise_steps"]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class Throughput(L.Callback):
    def __init__(self, skip_steps: int = 2, log: bool = True):
        self.skip_steps, self.log = skip_steps, log
        self.history: list[tuple[float, int, int]] = []  # (step seconds, tokens, samples)
        self._last: float | None = None
        self.last: dict[str, float] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self._last = None  # do not count the time between epochs (validation) as a step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._last is None:
            self._last = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        dt, self._last = now - self._last, now
        x = batch["input_ids"]
        samples = x.shape[0] * trainer.world_size
        tokens = x.numel() * trainer.world_size
        if trainer.global_step > self.skip_steps:
            self.history.append((dt, tokens, samples))
        step = trainer.global_step - 1
        if self.log and should_log_step(trainer, step):
            self.last = {"perf/tokens_per_s": tokens / dt, "perf/samples_per_s": samples / dt, "perf/step_time_s": dt,
                         "perf/peak_mem_mb": peak_memory_mb(pl_module.device)}
            log_step_metrics(trainer, self.last, step)

    def summary(self) -> dict[str, float]:
        """Over the recorded steps: mean tokens/s, samples/s and step seconds, plus the median step
        time and the tokens/s it implies (robust to load spikes on a shared machine)."""
        if not self.history:
            return {}
        return summarise_steps([h[0] for h in self.history], [h[1] for h in self.history], [h[2] for h in self.history])


def summarise_steps(times: list[float], tokens: list[int], samples: list[int]) -> dict[str, float]:
    """Throughput figures from per-step wall times and token/sample counts."""
    t = sum(times)
    med = statistics.median(times)
    return {"tokens_per_s": sum(tokens) / t, "samples_per_s": sum(samples) / t, "step_time_s": t / len(times),
            "median_step_time_s": med, "median_tokens_per_s": statistics.median(tokens) / med, "steps": len(times)}
