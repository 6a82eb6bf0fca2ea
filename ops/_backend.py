"""Backend dispatch shared by every public op.

Every public op takes ``backend="auto" | "triton" | "cpu" | "reference"``.

* ``reference``: the plain sequential definition (``ops/<op>/reference.py``), the ground truth.
* ``cpu``: the fast CPU path (chunked torch or a compiled loop). It is pure torch, so it also
  runs on CUDA tensors, just not as fast as Triton.
* ``triton``: the Triton kernels. Needs CUDA tensors, or ``TRITON_INTERPRET=1`` (then the
  kernels execute on CPU tensors through Triton's interpreter: that is how tests run them).
* ``auto``: Triton for CUDA tensors when Triton is importable, the fast CPU path otherwise.

The environment variable ``PARAZOO_BACKEND`` replaces ``auto`` globally (an explicit
non-auto ``backend=`` argument still wins, so code that asks for a path gets it).
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "cpu", "reference")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``import triton`` works (Linux wheels); never raises."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the platform
        return False
    return True


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, *tensors: torch.Tensor | None, op: str = "op") -> str:
    """Turn the ``backend=`` argument into the concrete path to run.

    ``tensors`` are the op's inputs (None entries are skipped); their device decides ``auto``.
    Raises ValueError for an unknown name and RuntimeError when the asked-for path cannot run
    on these tensors, before any kernel starts.
    """
    if backend is None:
        backend = "auto"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("PARAZOO_BACKEND", "").strip() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"PARAZOO_BACKEND must be one of {BACKENDS}, got {env!r}")
        backend = env
    on_cuda = any(t is not None and t.is_cuda for t in tensors)
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "cpu"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{op}: backend='triton' needs the triton package, which is not importable here")
        if not on_cuda and not triton_interpret():
            raise RuntimeError(
                f"{op}: backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to run the kernels "
                "on CPU tensors in Triton's interpreter; use backend='cpu' for the fast CPU path"
            )
    return backend
