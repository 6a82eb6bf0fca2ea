"""``parazoo train``: train with a YAML recipe, LightningCLI conventions.

    parazoo train --config recipes/debug.yaml [--trainer.max_steps 100] [--model.lr 3e-3] ...
    parazoo train --config recipes/debug.yaml --print_config        # resolved config, then exit
    parazoo train --config recipes/debug.yaml --ckpt_path runs/debug/version_0/checkpoints/last.ckpt
    parazoo train export --ckpt <last.ckpt> --out <folder>           # -> save_pretrained folder

A recipe has the sections ``model`` (LMModule: ``config`` = a ModelConfig or preset name, and
optimiser settings), ``data`` (a data module: ``class_path`` MQAR / SelectiveCopying /
InductionHeads / TextData and ``init_args``), ``trainer`` (lightning.Trainer arguments) and the
top-level keys ``name`` (run folder and W&B group; default: the recipe's file name), ``out_dir``,
``ckpt_path`` (resume), ``checkpoint_every_n_steps``, ``wandb``, ``wandb_project``,
``seed_everything``. Unknown keys anywhere are errors. The resolved config is printed first, then
the data is checked against the model (vocab, sequence length) before training starts.
Loggers: CSV always, W&B (see ``loggers.py``); callbacks: progress bar, throughput, checkpoints
(``last.ckpt`` every ``checkpoint_every_n_steps``), text samples (text data), solver statistics.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from .callbacks import SolverStats, TextSamples, Throughput
from .data.base import LMDataModule
from .loggers import build_loggers
from .module import LMModule, check_data_fits_model

__all__ = ["TrainCLI", "main"]

TRAINER_DEFAULTS = {"max_steps": 1000, "gradient_clip_val": 1.0, "log_every_n_steps": 10, "accelerator": "auto",
                    "devices": 1, "num_sanity_val_steps": 0}


class TrainCLI(LightningCLI):
    """LightningCLI with parazoo's loggers and callbacks attached to every run."""

    def __init__(self, args: list[str]):
        # args come explicitly from the `parazoo` dispatcher; Lightning warns whenever sys.argv differs.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        super().__init__(LMModule, LMDataModule, subclass_mode_data=True, run=False, args=args,
                         seed_everything_default=0, trainer_defaults=dict(TRAINER_DEFAULTS),
                         save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                         parser_kwargs={"prog": "parazoo train", "default_env": False})

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--name", type=str | None, default=None,
                            help="run name = log folder and W&B group (default: the recipe's file name)")
        parser.add_argument("--out_dir", type=str, default="runs", help="folder for logs and checkpoints")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume from this checkpoint")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=100, help="write last.ckpt this often")
        parser.add_argument("--wandb", type=bool, default=True, help="log to Weights & Biases (mode: WANDB_MODE)")
        parser.add_argument("--wandb_project", type=str, default="parazoo")

    def run_name(self) -> str:
        if self.config.get("name"):
            return self.config["name"]
        cfgs = self.config.get("config") or []
        return Path(str(cfgs[-1])).stem if cfgs else "run"

    def before_instantiate_classes(self) -> None:
        _print(self.parser.dump(self.config, skip_none=False, skip_check=True))

    def instantiate_trainer(self, **kwargs):
        import yaml

        name = self.run_name()
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
        resolved["name"] = name
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = build_loggers(self.config["out_dir"], name, config=resolved,
                                             project=self.config["wandb_project"], wandb=self.config["wandb"])
        callbacks = list(trainer_cfg.get("callbacks") or [])
        callbacks += [Throughput(), SolverStats()]
        if getattr(self.datamodule, "task", None) == "text":
            callbacks.append(TextSamples())
        if trainer_cfg.get("enable_checkpointing", True) is not False:
            callbacks.append(ModelCheckpoint(save_last=True, every_n_train_steps=self.config["checkpoint_every_n_steps"],
                                             save_top_k=1))
        kwargs["callbacks"] = callbacks
        kwargs.setdefault("default_root_dir", self.config["out_dir"])
        return super().instantiate_trainer(**kwargs)


@rank_zero_only
def _print(text: str) -> None:
    print(text, flush=True)


def preflight(model: LMModule, datamodule) -> None:
    """Data problems as clear errors before training: vocab / length mismatch, unreadable or
    too-small corpora (the data module's own setup raises those)."""
    check_data_fits_model(model.config, datamodule)
    datamodule.setup("fit")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        from .export import main as export_main

        return export_main(argv[1:])
    try:
        cli = TrainCLI(argv)
        preflight(cli.model, cli.datamodule)
    except SystemExit as e:  # argument / recipe errors: jsonargparse printed the message
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except ValueError as e:
        print(f"parazoo train: error: {e}", file=sys.stderr)
        return 2
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.config["ckpt_path"])
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
