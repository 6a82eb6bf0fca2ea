"""parazoo.ops: pure functions on tensors (scans, retention, conv, norms, Newton solver).

Each op lives in ``ops/<op>/`` with ``reference.py`` (the sequential definition from the paper's
equations), a fast CPU path and Triton kernels; its ``__init__`` validates arguments and
dispatches on ``backend="auto" | "triton" | "cpu" | "reference"`` (see ``_backend``).

Public names are resolved lazily so that importing one op does not import every kernel.
"""
from __future__ import annotations

import importlib
import sys
import types

from ._backend import BACKENDS, resolve_backend, triton_available, triton_interpret

# public name -> submodule that defines it
_EXPORTS = {
    "rms_norm": "rmsnorm",
    "linear_scan": "linear_scan",
    "block_scan": "block_scan",
    "selective_scan": "selective_scan",
    "selective_state_update": "selective_scan",
    "ssd_scan": "ssd",
    "causal_conv1d": "causal_conv1d",
    "causal_conv1d_update": "causal_conv1d",
    "chunk_retention": "retention",
    "parallel_retention": "retention",
    "fused_recurrent_retention": "retention",
    "newton_solve": "newton",
}

__all__ = ["BACKENDS", "resolve_backend", "triton_available", "triton_interpret", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        mod = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(mod, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


class _OpsModule(types.ModuleType):
    """Keeps ``parazoo.ops.<name>`` the public function when its subpackage has the same name.

    Importing ``parazoo.ops.linear_scan.cpu`` (say) makes Python bind the subpackage as the
    attribute ``linear_scan`` of this package, which would shadow the lazy function export; bind
    the subpackage's public function instead (the subpackage stays in sys.modules)."""

    def __setattr__(self, name, value):
        if (name in _EXPORTS and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{_EXPORTS[name]}" and hasattr(value, name)):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _OpsModule
