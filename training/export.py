"""Convert a Lightning checkpoint of ``LMModule`` into a ``save_pretrained`` folder
(``config.json`` + ``model.safetensors``, no pickle), loadable with
``LanguageModel.from_pretrained(folder)``.

    parazoo train export --ckpt runs/debug/version_0/checkpoints/last.ckpt --out my_model/
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from parazoo.arch import LanguageModel, ModelConfig

__all__ = ["checkpoint_to_model", "export_checkpoint", "main"]

_PREFIX = "model."


def checkpoint_to_model(ckpt_path: str) -> LanguageModel:
    """Rebuild the LanguageModel stored in an LMModule checkpoint (weights_only load)."""
    if not os.path.isfile(ckpt_path):
        raise ValueError(f"export: checkpoint {ckpt_path!r} does not exist")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {})
    if "config" not in hp or "state_dict" not in ckpt:
        raise ValueError(f"export: {ckpt_path!r} is not an LMModule checkpoint (no hyper_parameters.config / state_dict)")
    model = LanguageModel(ModelConfig.from_dict(dict(hp["config"])))
    sd = {k[len(_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(_PREFIX)}
    model.load_state_dict(sd)
    return model


def export_checkpoint(ckpt_path: str, out_dir: str) -> LanguageModel:
    model = checkpoint_to_model(ckpt_path)
    model.save_pretrained(out_dir)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="parazoo train export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="Lightning checkpoint written by parazoo train")
    ap.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    args = ap.parse_args(argv)
    try:
        model = export_checkpoint(args.ckpt, args.out)
    except ValueError as e:
        print(f"parazoo train export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({model.num_parameters():,} parameters, mixer {model.config.mixer!r})")
    return 0
