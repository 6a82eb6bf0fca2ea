"""Test session set-up: Triton kernels run in the CPU interpreter.

``@triton.jit`` decides interpreter vs compiler when a kernel is defined, so TRITON_INTERPRET
must be set before anything imports parazoo's kernels; it is set here, at collection start.
Ahead-of-time compilation runs in a subprocess without it (parazoo.ops._triton_aot).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("PYTHONHASHSEED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def triton_interpreter():
    """Run the test's Triton kernels on CPU tensors in Triton's interpreter.

    Skips when triton is not importable (non-Linux); fails loudly if the interpreter was not
    switched on before the kernels were defined (it cannot be switched on afterwards)."""
    from parazoo.ops import triton_available, triton_interpret

    if not triton_available():
        pytest.skip("triton is not installed on this platform")
    assert triton_interpret(), "TRITON_INTERPRET=1 must be set before parazoo's kernels are imported"
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
