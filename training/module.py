"""LMModule: a LightningModule that trains any ``parazoo.arch.LanguageModel``.

Objective: next-token cross-entropy over the scored positions S of a batch (labels != -100):

    L = -(1/|S|) sum_{(b,t) in S} ln softmax(logits[b, t])[labels[b, t]]      logits (B, T, V)

Optimiser: AdamW with weight-decay groups (``optim.param_groups``: ndim >= 2 and not marked
``_no_weight_decay``), warmup + cosine schedule stepped every optimizer step; gradient clipping
is the Trainer's ``gradient_clip_val``. Metrics (``metrics.py``): loss, perplexity, bits per byte
for text data, accuracy for synthetic tasks (per validation slice, e.g. MQAR's (kv, length)).
Logged keys: ``train/{loss,ppl,bpb|acc,lr,tokens}`` every ``log_every_n_steps`` steps (written
straight to the loggers, see ``loggers.log_step_metrics``; ``train/loss`` also feeds the progress
bar), ``val/{loss,ppl,bpb|acc}`` and
``val/<slice>/{...}`` when the data module has several validation slices. Under DDP the
validation metrics are exact over all ranks (summed statistics); ``train/*`` step values are
rank zero's own batch (no per-step all-reduce). Resume restores weights, optimiser, schedule,
data position and ``tokens_seen``; the RNG state is not restored, so runs with dropout > 0
resume statistically, not bit for bit.
"""
from __future__ import annotations

import math
from functools import partial

import lightning as L
import torch

from parazoo.arch import LanguageModel, ModelConfig

from .data.base import IGNORE_INDEX
from .loggers import log_step_metrics, should_log_step
from .metrics import lm_loss, lm_statistics, summarise
from .optim import build_adamw, warmup_cosine

__all__ = ["LMModule", "check_data_fits_model"]


def _as_config(config) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, str):
        return ModelConfig.from_name(config)
    if isinstance(config, dict):
        return ModelConfig.from_dict(config)
    raise ValueError(f"LMModule: argument 'config' must be a ModelConfig, a preset name or a dict, got {type(config).__name__}")


def check_data_fits_model(config: ModelConfig, datamodule) -> None:
    """Clear errors, before any training, when the data cannot be fed to the model."""
    vocab = getattr(datamodule, "vocab_size", None)
    if vocab is not None and vocab > config.vocab_size:
        raise ValueError(f"data uses {vocab} token ids but the model's vocab_size is {config.vocab_size}; "
                         f"set model.config.vocab_size >= {vocab}")
    max_len = getattr(datamodule, "max_seq_len", None)
    if max_len is not None and max_len > config.max_seq_len:
        raise ValueError(f"data has sequences of {max_len} tokens but the model supports max_seq_len="
                         f"{config.max_seq_len}; shorten the data's seq_len or raise model.config.max_seq_len")


class LMModule(L.LightningModule):
    """Train a LanguageModel built from ``config`` (a ModelConfig, its dict, or a preset name).

    Args:
        lr: peak learning rate.  weight_decay: AdamW decay of the decayed group.
        betas, eps: AdamW.  warmup_steps: linear warmup length.
        decay_steps: cosine horizon in optimizer steps (default: the Trainer's total steps).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
    """

    def __init__(self, config: ModelConfig | str = "attention-tiny", lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, warmup_steps: int = 100,
                 decay_steps: int | None = None, min_lr_ratio: float = 0.1):
        super().__init__()
        cfg = _as_config(config)
        if not lr > 0:
            raise ValueError(f"LMModule: argument 'lr' must be > 0, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"LMModule: argument 'weight_decay' must be >= 0, got {weight_decay!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"LMModule: argument 'warmup_steps' must be an int >= 0, got {warmup_steps!r}")
        if decay_steps is not None and (not isinstance(decay_steps, int) or decay_steps < 1):
            raise ValueError(f"LMModule: argument 'decay_steps' must be a positive int or None, got {decay_steps!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"LMModule: argument 'min_lr_ratio' must be in [0, 1], got {min_lr_ratio!r}")
        self.save_hyperparameters()
        self.hparams["config"] = cfg.to_dict()  # plain data: checkpoints load without unpickling classes
        self.model = LanguageModel(cfg)
        self.tokens_seen = 0
        self.last_train_metrics: dict[str, float] = {}
        self._val_stats: dict[int, torch.Tensor] = {}

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    # -------------------------------------------------------------- data-dependent set-up
    def _datamodule(self):
        return self.trainer.datamodule if self._trainer is not None else None

    def setup(self, stage: str) -> None:
        dm = self._datamodule()
        if dm is not None:
            check_data_fits_model(self.config, dm)
        self._bytes_per_token = getattr(dm, "bytes_per_token", None) if getattr(dm, "task", None) == "text" else None
        self._accuracy = getattr(dm, "task", None) == "synthetic"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[0]

    # -------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        x, y = batch["input_ids"], batch["labels"]                    # (B, T) each
        logits = self.model(x)[0]                                     # (B, T, V)
        loss = lm_loss(logits, y)
        self.tokens_seen += x.numel() * self.trainer.world_size
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0])
        step = self.trainer.global_step
        if should_log_step(self.trainer, step):
            self.last_train_metrics = self._step_metrics(loss.detach(), logits.detach(), y)
            log_step_metrics(self.trainer, self.last_train_metrics, step)
        return loss

    def _step_metrics(self, loss, logits, labels) -> dict[str, float]:
        out = {"train/loss": float(loss), "train/ppl": math.exp(min(float(loss), 700.0)),
               "train/tokens": float(self.tokens_seen), "train/lr": self.optimizers().param_groups[0]["lr"]}
        if self._bytes_per_token:
            out["train/bpb"] = float(loss) / (math.log(2) * self._bytes_per_token)
        if self._accuracy:
            mask = labels != IGNORE_INDEX
            out["train/acc"] = float(((logits.argmax(-1) == labels) & mask).sum() / mask.sum().clamp_min(1))
        return out

    def configure_optimizers(self):
        h = self.hparams
        opt = build_adamw(self.model, h.lr, h.weight_decay, h.betas, h.eps)
        horizon = h.decay_steps
        if horizon is None:
            horizon = self.trainer.estimated_stepping_batches
            if horizon == float("inf"):
                raise ValueError("LMModule: set trainer.max_steps (or model.decay_steps) so the cosine schedule has a horizon")
        fn = partial(warmup_cosine, warmup_steps=h.warmup_steps, decay_steps=int(horizon), min_lr_ratio=h.min_lr_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_stats = {}

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        logits = self.model(batch["input_ids"])[0]
        st = lm_statistics(logits, batch["labels"])
        self._val_stats[dataloader_idx] = self._val_stats.get(dataloader_idx, 0) + st

    def on_validation_epoch_end(self) -> None:
        loaders = self.trainer.val_dataloaders
        n = len(loaders) if isinstance(loaders, (list, tuple)) else 1
        dm = self._datamodule()
        names = list(getattr(dm, "val_names", [])) if dm is not None else []
        if len(names) != n:
            names = [f"val{i}" for i in range(n)]
        stats = torch.stack([self._val_stats.get(i, torch.zeros(3, dtype=torch.float64, device=self.device))
                             for i in range(n)])                                          # (n, 3)
        stats = self.trainer.strategy.reduce(stats, reduce_op="sum")                      # over ranks
        metrics = {f"val/{k}": v for k, v in summarise(stats.sum(0), self._bytes_per_token, self._accuracy).items()}
        if n > 1:
            for name, st in zip(names, stats):
                metrics.update({f"val/{name}/{k}": v for k, v in summarise(st, self._bytes_per_token, self._accuracy).items()})
        if metrics:
            self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        self.last_val_metrics = metrics

    # -------------------------------------------------------------- checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
