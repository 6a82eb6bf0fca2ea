"""Implicit-adjoint backward of the Newton solve: gradients without unrolling Newton iterations.

At the solution h* every step satisfies h*_t = f(h*_{t-1}, x_t). For a loss with upstream
gradients g_t = dL/dh*_t, the adjoint lambda_t = dL/d(h*_t) through all later steps is

    lambda_t = g_t + A_{t+1}^T lambda_{t+1},   lambda_{T-1} = g_{T-1},   A_t = df/dh_{t-1}(h*_{t-1}, x_t)

a reverse linear scan with the transposed Jacobians. Then one batched vector-Jacobian product
of f at (h*_{t-1}, x_t) over all t gives

    dL/dx_t = (df/dx_t)^T lambda_t,   dL/dtheta = sum_t (df/dtheta)^T lambda_t,
    dL/dh0  = A_0^T lambda_0          (the h_prev-gradient of the first step),

which is exactly backpropagation through time at the solution. Chunked: processing chunks last
to first, the h_prev-gradient of a chunk's first step is the A^T lambda carried into the previous
chunk's last step, so memory is bounded by one chunk.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .solver import newton_forward, shift
from .structure import solve_dtype

__all__ = ["NewtonAdjoint"]


class NewtonAdjoint(torch.autograd.Function):
    """apply(ctx_spec, x, h0, *params) -> h. ctx_spec = (f, evaluate, structure, opts, op, info_out, fused)."""

    @staticmethod
    def forward(ctx, spec, x, h0, *params):
        f, evaluate, structure, opts, op, info_out, fused = spec
        h, info = newton_forward(f, evaluate, structure, x, h0, opts, op, fused)
        info_out.append(info)
        ctx.spec = spec
        ctx.params = params
        ctx.save_for_backward(x, h0, h)
        return h.to(torch.promote_types(x.dtype, h0.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        f, evaluate, structure, opts, op, _, _ = ctx.spec
        x, h0, h = ctx.saved_tensors
        params = ctx.params
        need_x, need_h0 = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        diff_params = [p for p, need in zip(params, ctx.needs_input_grad[3:]) if need]
        dt = solve_dtype(h.dtype)
        T = x.shape[1]
        chunk = opts.chunk_size or T
        starts = list(range(0, T, chunk))
        gx = torch.zeros_like(x) if need_x else None
        gp = [None] * len(diff_params)  # stays None for a parameter f does not use
        carry = None  # A_{t1}^T lambda_{t1} from the chunk after this one, (B, *S)
        g_all = grad_h.to(dt)
        h_prev_all = shift(h, h0.to(h.dtype))
        for t0 in reversed(starts):
            t1 = min(t0 + chunk, T)
            hp = h_prev_all[:, t0:t1]
            xc = x[:, t0:t1]
            with torch.no_grad():
                _, A = evaluate(hp, xc)  # (B, Tc, ...) at the solution
                A = structure.transpose(A.to(dt))
                # lambda_t = A_{t+1}^T lambda_{t+1} + g_t: shift A one step back, zero at the chunk end
                A_next = torch.cat([A[:, 1:], torch.zeros_like(A[:, :1])], dim=1)
                g = g_all[:, t0:t1]
                if carry is not None:
                    g = g.clone()
                    g[:, -1] += carry
                lam = structure.scan(A_next, g, reverse=True, backend=opts.backend)
            with torch.enable_grad():
                hp_d = hp.detach().requires_grad_(True)
                x_d = xc.detach().requires_grad_(need_x)
                out = f(x_d.reshape(-1, *xc.shape[2:]), hp_d.reshape(-1, *hp.shape[2:]))
                inputs = [hp_d] + ([x_d] if need_x else []) + diff_params
                grads = torch.autograd.grad(out, inputs, lam.reshape(out.shape).to(out.dtype), allow_unused=True)
            ghp = grads[0]
            carry = ghp[:, 0].to(dt) if ghp is not None else torch.zeros_like(h0, dtype=dt)
            i = 1
            if need_x:
                if grads[1] is not None:
                    gx[:, t0:t1] = grads[1]
                i = 2
            for j, g_p in enumerate(grads[i:]):
                if g_p is not None:
                    gp[j] = g_p if gp[j] is None else gp[j] + g_p
        gh0 = carry.to(h0.dtype) if need_h0 else None
        it = iter(gp)
        gparams = [next(it) if need else None for need in ctx.needs_input_grad[3:]]
        return (None, gx, gh0, *gparams)
