"""Benchmark cases for ``parazoo bench ops``: one module per op, each with ``cases(quick)``."""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass
class OpCase:
    """One op at one shape.

    make(): returns a dict of input tensors (float32, CPU unless the harness moves them; those
    that need gradients must have requires_grad=True when ``grad`` is true).
    run(inputs, backend): calls the public op with ``backend=`` and returns a tensor or a tuple
    whose first element is the output that the backward pass differentiates (sum of it).
    backends: the backends to time ("reference" is skipped in quick mode when ``slow_reference``).
    copy_bytes: optional bytes of inputs+outputs, to report time relative to one memory copy.
    """

    op: str
    shape: str
    make: Callable[[], dict]
    run: Callable[[dict, str], object]
    backends: tuple = ("reference", "cpu", "triton")
    grad: bool = True
    slow_reference: bool = False
    copy_bytes: int | None = None
    goal: str = ""
