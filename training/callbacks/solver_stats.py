"""Newton solver statistics (ParaRNN) logged during training.

Protocol: any submodule of the model with a method ``solver_stats() -> dict[str, float | Tensor]``
reports the statistics of its last forward pass, e.g. ``{"newton_iters": 3, "residual": 2e-7}``
(number of Newton iterations taken and the final residual max_t ||h_t - f(h_{t-1}, x_t)||).
Every ``log_every_n_steps`` training steps this callback reads them from all such modules and logs, for each
key, the mean and the max over modules: ``solver/<key>_mean``, ``solver/<key>_max``. Models
without such modules log nothing.
"""
from __future__ import annotations

import lightning as L
import torch

from ..loggers import log_step_metrics, should_log_step

__all__ = ["SolverStats"]


class SolverStats(L.Callback):
    def __init__(self):
        self._modules: list | None = None
        self.last: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module):
        self._modules = [m for m in pl_module.modules() if callable(getattr(m, "solver_stats", None))]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        if not self._modules or not should_log_step(trainer, step):
            return
        values: dict[str, list[float]] = {}
        for m in self._modules:
            for k, v in (m.solver_stats() or {}).items():
                values.setdefault(k, []).append(float(v.detach().float().max()) if isinstance(v, torch.Tensor) else float(v))
        out = {}
        for k, vs in values.items():
            out[f"solver/{k}_mean"] = sum(vs) / len(vs)
            out[f"solver/{k}_max"] = max(vs)
        self.last = out
        if out:
            log_step_metrics(trainer, out, step)
