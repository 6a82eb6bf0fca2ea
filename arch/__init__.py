"""parazoo.arch: mixers, blocks, the language model and structures.

    from parazoo.arch import LanguageModel, ModelConfig, MIXERS, PRESETS
"""
import importlib as _importlib

from .config import PRESETS, ModelConfig, register_preset
from .model import Block, LanguageModel, ModelState
from .registry import MIXERS, build_mixer, register_mixer
from .tensor_parallel import tensor_parallel

# Modules that register mixers and presets (one line per mixer file).
_MIXER_MODULES = [
    "attention",
    "mamba",
    "mamba2",
    "retnet",
    "gam",
    "pararnn",
    "falcon_h1",
    "hymba",
    "presets",
]
for _m in _MIXER_MODULES:
    _importlib.import_module(f"{__name__}.{_m}")

__all__ = ["MIXERS", "PRESETS", "Block", "LanguageModel", "ModelConfig", "ModelState", "build_mixer",
           "register_mixer", "register_preset", "tensor_parallel"]
