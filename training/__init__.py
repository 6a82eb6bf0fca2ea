"""parazoo.training: Lightning module, data modules, callbacks, loggers and the train CLI.

    from parazoo.training import LMModule, MQAR, TextData
    trainer.fit(LMModule("attention-tiny"), TextData(seq_len=128))

``parazoo train --config recipes/<name>.yaml`` runs a recipe (``training/cli.py``).
"""
from .callbacks import SolverStats, TextSamples, Throughput
from .data import MQAR, IGNORE_INDEX, InductionHeads, LMDataModule, SelectiveCopying, TextData
from .export import checkpoint_to_model, export_checkpoint
from .loggers import build_loggers, wandb_mode
from .module import LMModule, check_data_fits_model

__all__ = ["IGNORE_INDEX", "InductionHeads", "LMDataModule", "LMModule", "MQAR", "SelectiveCopying", "SolverStats",
           "TextData", "TextSamples", "Throughput", "build_loggers", "check_data_fits_model", "checkpoint_to_model",
           "export_checkpoint", "wandb_mode"]
