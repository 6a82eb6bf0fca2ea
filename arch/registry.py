"""The mixer registry: name -> class.

A mixer maps (B, T, d_model) -> (B, T, d_model) and has the two entry points of the shared
contract: ``forward(x, state=None) -> (y, state)`` and
``init_state(batch_size, device=None, dtype=None)``. Its constructor takes ``d_model`` first,
then keyword options with the paper's defaults. Adding a mixer = one file in arch/ with
``@register_mixer("name")`` plus its module name in ``arch/__init__.py``'s ``_MIXER_MODULES``;
the shared contract tests pick it up.
"""
from __future__ import annotations

MIXERS: dict[str, type] = {}


def register_mixer(name: str):
    """Class decorator: ``@register_mixer("mamba") class Mamba(nn.Module): ...``."""

    def deco(cls):
        if name in MIXERS and MIXERS[name] is not cls:
            raise ValueError(f"mixer name {name!r} is already registered to {MIXERS[name].__name__}")
        MIXERS[name] = cls
        cls.mixer_name = name
        return cls

    return deco


def build_mixer(name: str, d_model: int, **kwargs):
    """Instantiate a registered mixer, with a clear error for an unknown name or option."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; registered mixers: {sorted(MIXERS)}")
    cls = MIXERS[name]
    try:
        return cls(d_model, **kwargs)
    except TypeError as e:
        raise ValueError(f"mixer {name!r}: bad options {sorted(kwargs)}: {e}") from e
