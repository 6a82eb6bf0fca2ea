"""newton_solve: all steps of a nonlinear recurrence h_t = f(h_{t-1}, x_t) at once (ParaRNN, DEER).

Equations (ANCHORS.md, ParaRNN / DEER / ELK):

    residual   F_t(h) = h_t - f(h_{t-1}, x_t),  h_{-1} = h0
    Newton     delta_t = A_t delta_{t-1} + (f(h_{t-1}, x_t) - h_t),  A_t = df/dh_{t-1};  h <- h + omega delta
    adjoint    lambda_t = g_t + A_{t+1}^T lambda_{t+1};  grads = one batched vjp of f at (h*_{t-1}, x_t)

Each Newton step and the adjoint are one parallel scan (``linear_scan`` for diagonal Jacobians,
``block_scan`` for K x K blocks or a small dense Jacobian). Pieces: ``structure`` (Jacobian
layouts and their scans), ``jacobian`` (autograd / closed-form Jacobians, structure probe),
``solver`` (Newton iterations, convergence, fallback), ``adjoint`` (the backward),
``reference`` (the sequential loop).

newton_solve takes a Python callable, so it is a ``torch.autograd.Function``, not a
``torch.library`` custom op (custom ops cannot take callables).
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._validate import check_same_device, check_tensor
from .adjoint import NewtonAdjoint
from .info import INITS, ON_FAIL, NewtonError, NewtonInfo, NewtonOptions, default_tolerances
from .jacobian import check_structure, make_evaluator
from .reference import sequential_solve
from .solver import newton_forward, shift
from .structure import Structure, parse_structure, solve_dtype

__all__ = ["newton_solve", "NewtonInfo", "NewtonOptions", "NewtonError", "Structure", "parse_structure",
           "check_structure", "sequential_solve", "default_tolerances"]

OP = "newton_solve"


def _check_int(name, v, lo, optional=False):
    if v is None and optional:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{OP}: argument {name!r} must be an int >= {lo}{' or None' if optional else ''}, got {v!r}")


def _check_tol(name, v):
    if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0):
        raise ValueError(f"{OP}: argument {name!r} must be a float >= 0 or None, got {v!r}")


def make_options(init="f0", picard_sweeps=2, omega=1.0, max_iters=20, atol=None, rtol=None, check_every=1,
                 on_fail="sequential", chunk_size=None, backend="auto") -> NewtonOptions:
    """Validated NewtonOptions (ValueError naming the bad argument)."""
    if init not in INITS:
        raise ValueError(f"{OP}: argument 'init' must be one of {INITS}, got {init!r}")
    _check_int("picard_sweeps", picard_sweeps, 0)
    if not isinstance(omega, (int, float)) or isinstance(omega, bool) or not 0 < omega <= 2:
        raise ValueError(f"{OP}: argument 'omega' must be a float in (0, 2], got {omega!r}")
    _check_int("max_iters", max_iters, 0)
    _check_tol("atol", atol)
    _check_tol("rtol", rtol)
    _check_int("check_every", check_every, 1)
    if on_fail not in ON_FAIL:
        raise ValueError(f"{OP}: argument 'on_fail' must be one of {ON_FAIL}, got {on_fail!r}")
    _check_int("chunk_size", chunk_size, 1, optional=True)
    return NewtonOptions(init=init, picard_sweeps=picard_sweeps, omega=float(omega), max_iters=max_iters,
                         atol=atol, rtol=rtol, check_every=check_every, on_fail=on_fail,
                         chunk_size=chunk_size, backend=backend)


def newton_solve(f, x: torch.Tensor, h0: torch.Tensor | None = None, *, state_shape=None, jacobian="diag",
                 jac_fn=None, params=None, init="f0", picard_sweeps=2, omega=1.0, max_iters=20, atol=None,
                 rtol=None, check_every=1, on_fail="sequential", chunk_size=None, return_info=False,
                 fused_forward=None, backend="auto"):
    """Solve h_t = f(h_{t-1}, x_t) for t = 0..T-1 by Newton's method with parallel scans.

    f: callable ``f(x_t (N, *X), h_prev (N, *S)) -> h_t (N, *S)`` (the cell convention of
        ``torch.nn.RNNCell``), batch-agnostic (the solver
        evaluates all B*T steps in one call). An ``nn.Module`` cell works as is.
    x: (B, T, *X) inputs. h0: (B, *S) initial state, or None for zeros (then ``state_shape``
        = S is required).
    jacobian: structure of df/dh_prev: "diag" (state (.., *S), linear_scan), ("block", K)
        (independent K x K blocks along the state's last dim, which must be K; block_scan), or
        "dense" (any cell, small D = prod(S)).
    jac_fn: optional closed form ``jac_fn(x_t, h_prev) -> (f(x_t, h_prev), A)`` with A of shape
        (N, *S) for diag, (N, *S, K) for blocks, (N, D, D) for dense; default: forward-mode
        autograd with structured probes (1, K or D jvps per Newton step).
    params: tensors f depends on that need gradients; default: ``f.parameters()`` when f is an
        ``nn.Module``, else none (pass the tensors a closure captures to get their grads).
    init: "f0" (h_t = f(h0, x_t)), "zeros", or "picard" (f0 + ``picard_sweeps`` Picard sweeps).
    omega: damping, h <- h + omega * delta. max_iters: Newton steps per chunk before on_fail.
    atol, rtol: stop when |h_t - f(h_{t-1}, x_t)| <= atol + rtol |h_t| everywhere (default
        1e-5 for float32, 1e-10 for float64); checked every ``check_every`` steps.
    on_fail: "sequential" (default: exact sequential solve of the chunk, warned once),
        "raise" (NewtonError) or "warn" (return the last iterate; NaN/inf is never returned).
    chunk_size: solve the sequence in chunks of this length, carrying the state across.
    return_info: also return a NewtonInfo (iterations per chunk, final residual, fallbacks).
    fused_forward: optional ``fused_forward(x, h0, atol, rtol, max_iters, backend) -> (h, iters,
        residual, converged) | None``: a kernel that runs all Newton iterations of this particular f
        itself (ParaGRU / ParaLSTM: Triton, or a fused C loop on CPU); None = not applicable here.
        Its result gets the same on_fail handling and the same implicit-adjoint backward.
    backend: "auto" | "triton" | "cpu" | "reference"; "reference" runs the sequential loop with
        ordinary autograd (BPTT); the others pick the backend of the scans.

    Returns h (B, T, *S) [, NewtonInfo]. Gradients reach x, h0 and ``params`` through the
    implicit adjoint (one reverse scan + one batched vjp of f), never through the iterations.
    """
    if not callable(f):
        raise ValueError(f"{OP}: argument 'f' must be callable f(x_t, h_prev) -> h_t, got {type(f).__name__}")
    check_tensor("x", x, op=OP)
    if x.dim() < 2:
        raise ValueError(f"{OP}: argument 'x' must have shape (B, T, *X), got {tuple(x.shape)}")
    B, T = x.shape[:2]
    if T < 1:
        raise ValueError(f"{OP}: argument 'x' must have at least one time step, got shape {tuple(x.shape)}")
    structure = parse_structure(jacobian, OP)
    if h0 is None:
        if state_shape is None:
            raise ValueError(f"{OP}: give h0 (B, *S) or state_shape=S (h0 = zeros)")
        S = tuple(int(s) for s in ((state_shape,) if isinstance(state_shape, int) else state_shape))
        h0 = torch.zeros(B, *S, dtype=solve_dtype(x.dtype), device=x.device)
    else:
        check_tensor("h0", h0, op=OP)
        if h0.dim() < 1 or h0.shape[0] != B:
            raise ValueError(f"{OP}: argument 'h0' must have shape (B={B}, *S), got {tuple(h0.shape)}")
        if state_shape is not None:
            S = tuple((state_shape,) if isinstance(state_shape, int) else state_shape)
            if tuple(h0.shape[1:]) != S:
                raise ValueError(f"{OP}: argument 'h0' must have shape (B, *state_shape) = {(B, *S)}, got {tuple(h0.shape)}")
    check_same_device(OP, x=x, h0=h0)
    structure.check_state_shape(tuple(h0.shape[1:]), OP)
    if fused_forward is not None and not callable(fused_forward):
        raise ValueError(f"{OP}: argument 'fused_forward' must be callable or None, got {type(fused_forward).__name__}")
    if jac_fn is not None and not callable(jac_fn):
        raise ValueError(f"{OP}: argument 'jac_fn' must be callable jac_fn(x_t, h_prev) -> (h_t, A) or None, got {type(jac_fn).__name__}")
    if params is None:
        params = [p for p in f.parameters()] if isinstance(f, torch.nn.Module) else []
    params = list(params)
    for i, p in enumerate(params):
        check_tensor(f"params[{i}]", p, op=OP)
    opts = make_options(init, picard_sweeps, omega, max_iters, atol, rtol, check_every, on_fail, chunk_size, backend)
    backend = resolve_backend(backend, x, h0, op=OP)

    if backend == "reference":
        h = sequential_solve(f, x, h0, OP)
        info = NewtonInfo(iterations=[0], residual=0.0, converged=True, fell_back=0, chunks=1)
        return (h, info) if return_info else h

    opts.backend = backend
    evaluate = make_evaluator(f, structure, jac_fn, OP)
    diff_params = tuple(p for p in params if p.requires_grad)
    if torch.is_grad_enabled() and (x.requires_grad or h0.requires_grad or diff_params):
        info_out: list = []
        h = NewtonAdjoint.apply((f, evaluate, structure, opts, OP, info_out, fused_forward), x, h0, *diff_params)
        info = info_out[0]
    else:
        h, info = newton_forward(f, evaluate, structure, x, h0, opts, OP, fused_forward)
        h = h.to(torch.promote_types(x.dtype, h0.dtype))
    return (h, info) if return_info else h
