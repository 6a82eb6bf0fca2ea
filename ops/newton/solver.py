"""Newton's method for all steps of h_t = f(h_{t-1}, x_t) at once (DEER / ParaRNN), forward only.

Residual F_t(h) = h_t - f(h_{t-1}, x_t), h_{-1} = h0 fixed. At iterate h, linearising f around
h_{t-1} gives the Newton system, itself a linear recurrence solved by one parallel scan:

    delta_t = A_t delta_{t-1} + (f(h_{t-1}, x_t) - h_t),   delta_{-1} = 0,   A_t = df/dh_{t-1}
    h <- h + omega * delta

Initial guess: h_t = f(h0, x_t) for every t ("f0"; h0 = 0 when not given, as ParaRNN), zeros,
or "picard": f0 followed by a few Picard sweeps h_t <- f(h_{t-1}, x_t) (each fixes one more step).
Stops when |F_t(h)| <= atol + rtol |h_t| everywhere (checked every ``check_every`` steps). Long
sequences are solved chunk by chunk, the last state of one chunk being h0 of the next.

On failure (max_iters reached, or NaN/inf in the iterate): on_fail="sequential" solves the chunk
exactly one step at a time and warns once per process; "raise" raises NewtonError; "warn" warns
and returns the last iterate when it is finite. Non-finite values are never returned silently.
No autograd here: gradients come from the implicit adjoint (``adjoint.py``).
"""
from __future__ import annotations

import warnings

import torch

from .jacobian import check_output
from .info import NewtonError, NewtonInfo, NewtonOptions, default_tolerances
from .reference import sequential_solve
from .structure import Structure, solve_dtype

__all__ = ["newton_forward", "shift"]

_WARNED = {"fallback": False}


def shift(h: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """(h0, h_0, ..., h_{T-2}): the previous state of every step; h (B, T, *S), h0 (B, *S)."""
    return torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)


def _initial_guess(f, x, h0, opts: NewtonOptions, op: str):
    B, T = x.shape[:2]
    if opts.init == "zeros":
        return h0.new_zeros(B, T, *h0.shape[1:])
    xf = x.reshape(B * T, *x.shape[2:])
    hp = h0.unsqueeze(1).expand(B, T, *h0.shape[1:]).reshape(B * T, *h0.shape[1:])
    out = f(xf, hp)
    check_output(out, hp, op)
    h = out.reshape(B, T, *h0.shape[1:])
    if opts.init == "picard":
        for _ in range(opts.picard_sweeps):
            h = f(xf, shift(h, h0).reshape(hp.shape)).reshape(h.shape)
    return h.to(h0.dtype)


def _fail(f, x, h0, h, k, resid, finite, opts: NewtonOptions, op: str):
    """Handle a chunk that did not converge; returns (h, fell_back)."""
    what = (f"produced NaN/inf after {k} iterations" if not finite
            else f"did not converge in {k} iterations (residual max-norm {resid:.3g})")
    if opts.on_fail == "raise":
        raise NewtonError(f"{op}: Newton {what}; lower omega, raise max_iters, use init='picard', "
                          f"shorter chunk_size, or on_fail='sequential'")
    if opts.on_fail == "warn" and finite:
        warnings.warn(f"{op}: Newton {what}; returning the last iterate (on_fail='warn')", RuntimeWarning, stacklevel=4)
        return h, False
    h_seq = sequential_solve(f, x, h0, op).to(h0.dtype)
    if not bool(torch.isfinite(h_seq).all()):
        raise NewtonError(f"{op}: Newton {what}, and the exact sequential solve is not finite either: "
                          f"the cell produces NaN/inf on these inputs (check x, h0 and the parameters)")
    if opts.on_fail == "warn":  # non-finite Newton iterate: never return it
        warnings.warn(f"{op}: Newton {what}; solved this chunk sequentially instead", RuntimeWarning, stacklevel=4)
    elif not _WARNED["fallback"]:
        _WARNED["fallback"] = True
        warnings.warn(f"{op}: Newton {what}; solved the chunk exactly one step at a time instead "
                      "(on_fail='sequential', warned once per process; see the returned NewtonInfo)",
                      RuntimeWarning, stacklevel=4)
    return h_seq, True


def _solve_chunk(f, evaluate, structure: Structure, x, h0, opts: NewtonOptions, atol, rtol, op):
    """Newton on one chunk. x (B, Tc, *X), h0 (B, *S) in the solve dtype. Returns (h, iters, resid, conv, fb)."""
    h = _initial_guess(f, x, h0, opts, op)
    resid = float("inf")
    k = 0
    while True:
        fh, A = evaluate(shift(h, h0), x)
        r = fh.to(h.dtype) - h  # = -F(h): the right-hand side of the Newton system
        if k % opts.check_every == 0 or k >= opts.max_iters:
            err = r.abs()
            if bool((err <= atol + rtol * h.abs()).all()):  # False wherever err is NaN
                return h, k, float(err.max()), True, False
            finite = bool(torch.isfinite(err).all())
            resid = float(err.max()) if finite else float("nan")
            if not finite or k >= opts.max_iters:
                h, fb = _fail(f, x, h0, h, k, resid, finite, opts, op)
                return h, k, resid, False, fb
        delta = structure.scan(A.to(h.dtype), r, backend=opts.backend)
        h = h + opts.omega * delta if opts.omega != 1.0 else h + delta
        k += 1


def _run_fused(fused, f, x, h0, opts, atol, rtol, info, op):
    """A fused kernel ran all Newton iterations; apply on_fail to the whole sequence if it failed."""
    out = fused(x, h0, atol, rtol, opts.max_iters, opts.backend)
    if out is None:
        return None
    h, iters, resid, ok = out
    h = h.to(h0.dtype)
    fell_back = False
    if not ok:
        finite = resid == resid and resid != float("inf") and bool(torch.isfinite(h).all())
        h, fell_back = _fail(f, x, h0, h, iters, resid, finite, opts, op)
    info.add(iters, resid, ok, fell_back)
    return h, info


def newton_forward(f, evaluate, structure: Structure, x: torch.Tensor, h0: torch.Tensor,
                   opts: NewtonOptions, op: str = "newton_solve", fused=None):
    """Solve the whole sequence chunk by chunk without autograd. Returns (h (B, T, *S), NewtonInfo).

    fused: optional ``fused(x, h0, atol, rtol, max_iters, backend) -> (h, iters, residual, ok) | None``,
    a kernel running every Newton iteration itself (ParaGRU / ParaLSTM: Triton or fused C); None
    from it means "not applicable here" (the generic path runs instead). Used with init="f0" and
    omega=1 only; it tiles time itself (chunk_size and check_every apply to the generic path).
    """
    dt = solve_dtype(h0.dtype)
    atol, rtol = default_tolerances(dt)
    atol = atol if opts.atol is None else opts.atol
    rtol = rtol if opts.rtol is None else opts.rtol
    T = x.shape[1]
    chunk = opts.chunk_size or T
    info = NewtonInfo()
    if fused is not None and opts.backend in ("triton", "cpu") and opts.init == "f0" and opts.omega == 1.0:
        with torch.no_grad():
            done = _run_fused(fused, f, x, h0.to(dt), opts, atol, rtol, info, op)
        if done is not None:
            return done
    outs = []
    state = h0.to(dt)
    with torch.no_grad():
        for t0 in range(0, T, chunk):
            h, k, resid, conv, fb = _solve_chunk(f, evaluate, structure, x[:, t0:t0 + chunk], state,
                                                 opts, atol, rtol, op)
            info.add(k, resid, conv, fb)
            outs.append(h)
            state = h[:, -1]
    h = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return h, info
