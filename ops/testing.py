"""Test utilities shared by every op and mixer test: dtype-aware comparison against references, and
the choice between an op's fused C loops and its pure-torch fallback.

Tolerances are stated per dtype, once, here. A kernel that needs looser numbers than these has a
bug to find, not a tolerance to raise.
"""
from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "assert_close", "assert_grads_match", "rel_rms_error", "run_in_chunks", "use_cpu_path"]

# (rtol, atol) for comparing a fast path with a float64/float32 reference computed on the same
# inputs. float32 matches mamba_ssm's tests of its kernels vs the sequential reference.
TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (6e-4, 2e-3),
    torch.bfloat16: (3e-2, 5e-2),
    torch.float16: (1e-2, 1e-2),
}


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||a - e||_2 / ||e||_2 in float64 (fla's test metric)."""
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 rtol: float | None = None, atol: float | None = None, name: str = "tensor") -> None:
    """torch.testing.assert_close with parazoo's per-dtype tolerances.

    dtype: the precision the fast path computed in (defaults to actual.dtype); expected is cast
    to actual's dtype-free float64 for the comparison, so a low-precision result is compared with
    the exact one. NaN anywhere fails.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    dtype = dtype or actual.dtype
    r, a = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    rtol = r if rtol is None else rtol
    atol = a if atol is None else atol
    if torch.isnan(actual).any() and not torch.isnan(expected).any():
        raise AssertionError(f"{name}: result has NaN where the reference has none")
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{name} ({dtype}): {m}")


def run_in_chunks(module, x: torch.Tensor, splits) -> tuple[torch.Tensor, object]:
    """Run a stateful module (``forward(x, state) -> (y, state)``) over x (B, T, ...) in chunks
    of the given lengths along time, carrying the state; returns the concatenated y and the
    final state (to compare with one full forward)."""
    if sum(splits) != x.shape[1]:
        raise ValueError(f"run_in_chunks: splits {list(splits)} do not add up to T={x.shape[1]}")
    state, outs, t = None, [], 0
    for n in splits:
        y, state = module(x[:, t:t + n], state)
        outs.append(y)
        t += n
    return torch.cat(outs, 1), state


def assert_grads_match(module, reference_fn, state_dict: dict, x: torch.Tensor) -> None:
    """Gradients of a module equal those of ``reference_fn(params, x)`` written from the equations:
    both are differentiated against one random cotangent; compares d input and every parameter
    (``state_dict`` holds the reference's copies of the module's parameters, same names)."""
    x1 = x.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    y1 = module(x1)[0]
    g = torch.randn(y1.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    (y1 * g).sum().backward()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in state_dict.items()}
    (reference_fn(params, x2) * g).sum().backward()
    assert_close(x1.grad, x2.grad, name="d input")
    for n, p in module.named_parameters():
        assert_close(p.grad, params[n].grad, name=f"d {n}")


def use_cpu_path(kind: str, monkeypatch, *kernels) -> None:
    """Select a CPU op's path for one pytest test: "torch" makes each given ``CKernel``'s ``load()``
    return None (the pure-torch fallback, what a machine without a C compiler runs); any other kind
    keeps the fused C loops and skips the test where they do not compile."""
    import pytest

    if kind == "torch":
        for k in kernels:
            monkeypatch.setattr(k, "load", lambda: None)
    elif any(k.load() is None for k in kernels):
        pytest.skip("no C compiler: the fused loops are unavailable")
