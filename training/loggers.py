"""Loggers: a CSVLogger always (results exist without W&B), plus a WandbLogger.

W&B mode: ``WANDB_MODE`` when set (``disabled`` in tests, ``offline``, ``online``); otherwise
``online`` if the user has configured W&B (``WANDB_API_KEY`` or a ``~/.netrc`` entry for
api.wandb.ai), else ``offline`` (runs are written locally and can be ``wandb sync``-ed later).
The run carries the full resolved config and is grouped by recipe name; every training step logs
``train/tokens`` (tokens seen, all ranks), selectable as the x-axis next to ``trainer/global_step``.
"""
from __future__ import annotations

import netrc
import os

from lightning.pytorch.loggers import CSVLogger, WandbLogger

__all__ = ["build_loggers", "log_step_metrics", "should_log_step", "wandb_mode"]


def wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def build_loggers(save_dir: str, name: str, config: dict | None = None, project: str = "parazoo",
                  wandb: bool = True, version: str | int | None = None) -> list:
    """[CSVLogger(save_dir/name/version_k)] + [WandbLogger(group=name, config=config)] when enabled."""
    csv = CSVLogger(save_dir=save_dir, name=name, version=version)
    loggers = [csv]
    mode = wandb_mode()
    if wandb and mode != "disabled":
        wb = WandbLogger(project=project, group=name, save_dir=csv.log_dir, offline=(mode == "offline"),
                         config=config or {}, job_type="train")
        loggers.append(wb)
    return loggers


def should_log_step(trainer, step: int) -> bool:
    """True on the steps Lightning writes step metrics: every ``log_every_n_steps``-th (step 0-based)."""
    return (step + 1) % max(1, trainer.log_every_n_steps) == 0


def log_step_metrics(trainer, metrics: dict, step: int) -> None:
    """Write per-step metrics straight to the trainer's loggers (rank zero only).

    ``LightningModule.log`` costs a pass over all logged results per call; for a handful of
    scalars every step on a small model that alone was ~40% of the step time on CPU. Per-step
    training metrics therefore go here, at Lightning's ``log_every_n_steps`` cadence."""
    if trainer.global_rank != 0 or not trainer.loggers:
        return
    values = {k: float(v) for k, v in metrics.items()}
    for lg in trainer.loggers:
        lg.log_metrics(values, step=step)
