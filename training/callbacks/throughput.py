"""Throughput: tokens/s, samples/s, step time and peak memory of training.

Measured per optimizer step as the wall-clock time between the ends of consecutive training
batches (so data loading, forward, backward, clipping and the optimizer step all count), over
all ranks (tokens = B * T * world_size). Peak memory: ``torch.cuda.max_memory_allocated`` on
GPU, the process's peak resident set size (ru_maxrss) on CPU. Logged as
``perf/{tokens_per_s,samples_per_s,step_time_s,peak_mem_mb}`` every ``log_every_n_steps``; the steps after ``skip_steps``
(warm-up) are kept in ``history`` for benchmarks, and ``summary()`` averages them.

FLOPs per token (``count_flops=True``): the first training step runs under
``torch.utils.flop_counter.FlopCounterMode``, which counts the forward and backward FLOPs of the
operators it knows (matmuls, convolutions, scaled-dot-product attention, plus CPU flash attention
registered here with torch's SDPA formula: 4 B H Tq Tk D forward, twice that backward, with no causal
discount, as torch counts its GPU kernels); divided by the step's
tokens (per rank) this is ``perf/flops_per_token``, and times tokens/s it gives ``perf/tflops``.
Operators it does not know (our scan kernels, pointwise ops, norms) count as zero, so the figure is
the matmul-type work only: a lower bound, exact for attention/MLP models up to those ops. The counted
step is excluded from the timing history (it is a warm-up step anyway).
"""
from __future__ import annotations

import resource
import statistics
import sys
import time

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..loggers import log_step_metrics, should_log_step

__all__ = ["Throughput", "peak_memory_mb", "summarise_steps", "flop_counter"]


def _cpu_sdpa_flops(query, key, value, *args, **kwargs) -> int:
    b, h, tq, d = query
    return 2 * b * h * tq * key[-2] * d + 2 * b * h * tq * key[-2] * value[-1]      # Q K^T and P V


def _cpu_sdpa_bwd_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    return 2 * _cpu_sdpa_flops(query, key, value)                                # dQ, dK, dV, dP


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that also knows the CPU flash-attention kernels (torch counts only the GPU ones)."""
    ops = torch.ops.aten
    mapping = {}
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[ops._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
        mapping[ops._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_bwd_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class Throughput(L.Callback):
    def __init__(self, skip_steps: int = 2, log: bool = True, count_flops: bool = True):
        self.skip_steps, self.log, self.count_flops = skip_steps, log, count_flops
        self.history: list[tuple[float, int, int]] = []  # (step seconds, tokens, samples)
        self._last: float | None = None
        self._counter: FlopCounterMode | None = None
        self.flops_per_token: float | None = None
        self.last: dict[str, float] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self._last = None  # do not count the time between epochs (validation) as a step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.count_flops and self.flops_per_token is None and self._counter is None:
            self._counter = flop_counter()
            self._counter.__enter__()
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
        counted = self._counter is not None
        if counted:  # this step ran under the FLOP counter: per-rank FLOPs / per-rank tokens
            self._counter.__exit__(None, None, None)
            self.flops_per_token = self._counter.get_total_flops() / x.numel()
            self._counter = None
        if trainer.global_step > self.skip_steps and not counted:
            self.history.append((dt, tokens, samples))
        step = trainer.global_step - 1
        if self.log and should_log_step(trainer, step):
            self.last = {"perf/tokens_per_s": tokens / dt, "perf/samples_per_s": samples / dt, "perf/step_time_s": dt,
                         "perf/peak_mem_mb": peak_memory_mb(pl_module.device)}
            if self.flops_per_token is not None:
                self.last["perf/flops_per_token"] = self.flops_per_token
                self.last["perf/tflops"] = self.flops_per_token * tokens / dt / 1e12
            log_step_metrics(trainer, self.last, step)

    def on_train_end(self, trainer, pl_module):
        if self._counter is not None:  # a step that never finished (interrupted run)
            self._counter.__exit__(None, None, None)
            self._counter = None

    def summary(self) -> dict[str, float]:
        """Over the recorded steps: mean tokens/s, samples/s and step seconds, plus the median step
        time and the tokens/s it implies (robust to load spikes on a shared machine)."""
        if not self.history:
            return {}
        out = summarise_steps([h[0] for h in self.history], [h[1] for h in self.history], [h[2] for h in self.history])
        if self.flops_per_token is not None:
            out["flops_per_token"] = self.flops_per_token
            out["tflops"] = self.flops_per_token * out["tokens_per_s"] / 1e12
        return out


def summarise_steps(times: list[float], tokens: list[int], samples: list[int]) -> dict[str, float]:
    """Throughput figures from per-step wall times and token/sample counts."""
    t = sum(times)
    med = statistics.median(times)
    return {"tokens_per_s": sum(tokens) / t, "samples_per_s": sum(samples) / t, "step_time_s": t / len(times),
            "median_step_time_s": med, "median_tokens_per_s": statistics.median(tokens) / med, "steps": len(times)}
