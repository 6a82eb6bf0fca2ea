"""f and its Jacobian A_t = df/dh_{t-1} at every time step at once, in a given structure.

For a batch-agnostic cell f(x (N, *X), h_prev (N, *S)) -> (N, *S) evaluated on all N = B*T
steps at once, the structure of the Jacobian tells how many forward-mode products recover it:

* diag:        A_ii = d f_i / d h_i. If the cell really is diagonal (d f_i / d h_j = 0 for
               i != j), the Jacobian-vector product with the all-ones probe returns exactly the
               diagonal: (J 1)_i = sum_j J_ij = J_ii. One jvp.
* ("block",K): probe k = 1 at block position k of every block, 0 elsewhere; (J e_k)_(c,i) =
               J_(c,i),(c,k) for block-diagonal J, i.e. column k of every block. K jvps.
* dense:       D = prod(S) jvps with the unit vectors (only for small states).

These products are only right for a cell that has the declared structure; ``check_structure``
verifies it on a small sample against the full Jacobian (``ParallelRNN`` does so on first use).
A cell may also supply a closed form ``jac_fn(x, h_prev) -> (f(x, h_prev), A)`` (ParaGRU,
ParaLSTM), which is much cheaper than forward-mode AD; the probe checks it as well.
"""
from __future__ import annotations

import math

import torch
from torch.func import jacfwd, jvp

from .structure import Structure

__all__ = ["make_evaluator", "check_output", "check_structure"]


def check_output(out, h_prev: torch.Tensor, op: str = "newton_solve") -> None:
    """f must return a tensor shaped like h_prev (the state); ValueError otherwise."""
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{op}: the cell f(x_t, h_prev) must return a tensor shaped like h_prev, got {type(out).__name__}")
    if out.shape != h_prev.shape:
        raise ValueError(f"{op}: the cell f(x_t, h_prev) returned shape {tuple(out.shape)} for h_prev of shape "
                         f"{tuple(h_prev.shape)}; the new state must have the shape of the previous one")


def _autograd_jacobian(f, structure: Structure, hp: torch.Tensor, x: torch.Tensor):
    """(f(hp, x), A) by forward-mode products with structured probes; hp (N, *S)."""
    fn = lambda h: f(x, h)  # noqa: E731
    if structure.kind == "diag":
        return jvp(fn, (hp,), (torch.ones_like(hp),))
    S = hp.shape[1:]
    if structure.kind == "block":
        k = structure.k
        cols, out = [], None
        for j in range(k):
            probe = torch.zeros_like(hp)
            probe[..., j] = 1
            out, col = jvp(fn, (hp,), (probe,))
            cols.append(col)
        return out, torch.stack(cols, dim=-1)  # (N, *C, K_out, K_in)
    d = math.prod(S)
    cols, out = [], None
    flat = hp.reshape(hp.shape[0], d)
    for j in range(d):
        probe = torch.zeros_like(flat)
        probe[:, j] = 1
        out, col = jvp(fn, (hp,), (probe.reshape(hp.shape),))
        cols.append(col.reshape(hp.shape[0], d))
    return out, torch.stack(cols, dim=-1)  # (N, D_out, D_in)


def make_evaluator(f, structure: Structure, jac_fn=None, op: str = "newton_solve"):
    """Return ``evaluate(h_prev, x) -> (f(h_prev, x), A)`` on (B, T, ...) tensors.

    h_prev (B, T, *S), x (B, T, *X) are flattened to one batch of B*T steps, so f (and jac_fn)
    run once over the whole sequence. A comes back in ``structure``'s layout over (B, T).
    Run it under ``torch.no_grad()``: it is for the solver, not for autograd.
    """

    def evaluate(h_prev: torch.Tensor, x: torch.Tensor):
        B, T = h_prev.shape[:2]
        S = h_prev.shape[2:]
        hp = h_prev.reshape(B * T, *S)
        xf = x.reshape(B * T, *x.shape[2:])
        if jac_fn is not None:
            out, A = jac_fn(xf, hp)
        else:
            out, A = _autograd_jacobian(f, structure, hp, xf)
        check_output(out, hp, op)
        want = structure.jac_shape((B * T,), tuple(S))
        if tuple(A.shape) != want:
            raise ValueError(f"{op}: the Jacobian for jacobian={structure} must have shape {want} for h_prev of shape "
                             f"{tuple(hp.shape)}, got {tuple(A.shape)} (from {'jac_fn' if jac_fn else 'autograd'})")
        return out.reshape(B, T, *S), A.reshape(B, T, *A.shape[1:])

    return evaluate


def check_structure(f, structure: Structure, h_prev: torch.Tensor, x: torch.Tensor, jac_fn=None,
                    op: str = "ParallelRNN", samples: int = 2) -> None:
    """Probe the declared structure on a few single steps; ValueError if the cell disagrees.

    h_prev (N, *S), x (N, *X): a handful of steps (the first ``samples`` are used). The full
    Jacobian of each step is computed by forward-mode AD (D jvps, D = prod(S)) and every entry
    the structure declares zero must be zero (relative to the largest entry). When ``jac_fn`` is
    given, its closed form must match the autograd Jacobian.
    """
    S = tuple(h_prev.shape[1:])
    d = math.prod(S)
    mask = structure.allowed_mask(S, device=h_prev.device)
    with torch.no_grad():
        for n in range(min(samples, h_prev.shape[0])):
            hp, xn = h_prev[n:n + 1].detach(), x[n:n + 1].detach()
            out = f(xn, hp)
            check_output(out, hp, op)
            J = jacfwd(lambda h: f(xn, h))(hp).reshape(d, d)  # (D_out, D_in)
            scale = J.abs().max().clamp_min(1e-30)
            bad = (J.abs() > 1e-6 * scale) & ~mask
            if bool(bad.any()):
                i, j = (int(v) for v in bad.nonzero()[0])
                raise ValueError(
                    f"{op}: the cell mixes state elements that jacobian={structure} declares independent: "
                    f"d f[{i}] / d h[{j}] = {float(J[i, j]):.3g} (flat state indices, state shape {S}); "
                    f"declare a wider structure (('block', K) or 'dense') or fix the cell")
            if jac_fn is not None:
                out_c, A_c = jac_fn(xn, hp)
                A_ref = structure.from_dense(J.reshape(1, d, d), S)
                if A_c.shape != A_ref.shape:
                    raise ValueError(f"{op}: jac_fn returned a Jacobian of shape {tuple(A_c.shape)}, expected "
                                     f"{tuple(A_ref.shape)} for jacobian={structure}")
                tol = 1e-4 if hp.dtype != torch.float64 else 1e-8
                if not torch.allclose(A_c.to(A_ref.dtype), A_ref, rtol=tol, atol=tol * float(scale)) or \
                        not torch.allclose(out_c.to(out.dtype), out, rtol=tol, atol=tol):
                    err = float((A_c.to(A_ref.dtype) - A_ref).abs().max())
                    raise ValueError(f"{op}: the cell's closed-form Jacobian (jac_fn) disagrees with autograd "
                                     f"(max abs difference {err:.3g}); it must return (f(x_t, h_prev), df/dh_prev)")
