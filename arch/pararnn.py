"""ParaRNN: nonlinear RNNs trained in parallel over the sequence by Newton's method.

Cells (ANCHORS.md, ParaRNN), input projections u = B x + b computed once for all steps:

ParaGRU (diagonal recurrent weights a_*, state h (B, H), Jacobian diagonal):
    z = sigmoid(a_z h + u_z);  r = sigmoid(a_r h + u_r);  c = tanh(a_h (h r) + u_h)
    h' = z c + (1 - z) h

ParaLSTM (CIFG with peepholes, state [c, h] stored as (B, H, 2), 2x2 Jacobian block per channel):
    f = sigmoid(a_f h + u_f + p_f c_prev);  c~ = tanh(a_c h + u_c)
    c = f c_prev + (1 - f) c~;  o = sigmoid(a_o h + u_o + p_o c);  h' = o tanh(c)

Both supply closed-form Jacobians A_t = d(state_t)/d(state_{t-1}) (``step_with_jacobian``), which
the Newton solver (``parazoo.ops.newton_solve``) uses instead of autograd, and fused kernels that
run every Newton iteration in one kernel for float32 (``fused_newton``: Triton on the triton
backend, a C loop on cpu; ops/newton/triton_para*.py, cpu_fused.py). The backward is always the
implicit adjoint (reverse scan + one vjp of the cell). ``recurrent_bound=m``
reparametrises every recurrent / peephole weight as m tanh(w / m) (|a| < m): a small m keeps the
dynamics contracting, so Newton converges in a few steps.

``ParallelRNN(cell, jacobian)`` runs any cell ``forward(x_t, h_prev) -> h_t`` over (B, T, ...)
by Newton (mode="parallel") or step by step (mode="sequential"); it probes the declared Jacobian
structure on its first call. The mixers ``pararnn_gru`` / ``pararnn_lstm`` are: cell (with its
input projection) -> gated RMSNorm (Mamba-2 style, rmsnorm(h * silu(z)) * w) -> output
projection. ANCHORS.md fixes no width for them; we use d_inner = expand * d_model, expand = 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from parazoo.ops import newton_solve, triton_available
from parazoo.ops.newton import check_structure, parse_structure, sequential_solve

from .registry import register_mixer
from .state import check_state

__all__ = ["ParaGRUCell", "ParaLSTMCell", "ParallelRNN", "ParaGRUMixer", "ParaLSTMMixer"]


def _bounded(w: torch.Tensor, bound: float | None) -> torch.Tensor:
    return w if bound is None else bound * torch.tanh(w / bound)


class _ProjectedCell(nn.Module):
    """A cell whose input enters only through u = in_proj(x): ``project`` runs once for all steps,
    ``step(u_t, h_prev)`` is the recurrence; ``forward(x_t, h_prev)`` is both."""

    n_gates = 3

    def __init__(self, input_size: int, hidden_size: int, n_recurrent: int, bias: bool, recurrent_bound):
        super().__init__()
        if recurrent_bound is not None and not recurrent_bound > 0:
            raise ValueError(f"{type(self).__name__}: recurrent_bound must be > 0 or None, got {recurrent_bound!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.recurrent_bound = recurrent_bound
        self.in_proj = nn.Linear(input_size, self.n_gates * hidden_size, bias=bias)
        self.recurrent = nn.Parameter(torch.empty(n_recurrent, hidden_size))
        nn.init.uniform_(self.recurrent, -0.5, 0.5)

    def weights(self):
        """The (bounded) recurrent weights, one row per name."""
        return _bounded(self.recurrent, self.recurrent_bound).unbind(0)

    def project(self, x: torch.Tensor) -> torch.Tensor:  # (..., input_size) -> (..., 3H)
        return self.in_proj(x)

    def step(self, u: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        return self.step_with_jacobian(u, h_prev, jacobian=False)

    def forward(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        return self.step(self.project(x_t), h_prev)

    def fused_newton(self, u: torch.Tensor, h0: torch.Tensor, atol: float, rtol: float, max_iters: int,
                     backend: str):
        """All Newton iterations in one kernel, float32 inside: Triton (``ops/newton/triton_para*.py``)
        or a fused C loop on CPU (``ops/newton/cpu_fused.py``). None where it does not apply
        (float64, no triton / no C compiler): newton_solve then runs its generic path."""
        if torch.float64 in (u.dtype, h0.dtype) or (backend == "triton" and not triton_available()):
            return None
        if backend == "cpu" and u.is_cuda:
            return None
        import importlib

        mod, fn = self.fused_kernels[backend]
        kernel = getattr(importlib.import_module(f"parazoo.ops.newton.{mod}"), fn)
        return kernel(u, torch.stack(self.weights()), h0, max_iters, atol, rtol)


class ParaGRUCell(_ProjectedCell):
    """ParaGRU cell: state (N, H); diagonal Jacobian."""

    jacobian_structure = "diag"
    fused_kernels = {"triton": ("triton_paragru", "paragru_newton_triton"), "cpu": ("cpu_fused", "paragru_newton_cpu")}

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, recurrent_bound: float | None = None):
        super().__init__(input_size, hidden_size, 3, bias, recurrent_bound)  # recurrent rows: a_z, a_r, a_h

    @property
    def state_shape(self) -> tuple:
        return (self.hidden_size,)

    def step_with_jacobian(self, u: torch.Tensor, h: torch.Tensor, jacobian: bool = True):
        """u (N, 3H), h (N, H) -> h' (N, H) [, dh'/dh (N, H)]."""
        az, ar, ah = self.weights()
        uz, ur, uh = u.chunk(3, dim=-1)
        z = torch.sigmoid(az * h + uz)
        r = torch.sigmoid(ar * h + ur)
        c = torch.tanh(ah * (h * r) + uh)
        h_new = h + z * (c - h)
        if not jacobian:
            return h_new
        dz = z * (1 - z) * az
        dc = (1 - c * c) * ah * (r + h * r * (1 - r) * ar)
        return h_new, dz * (c - h) + z * dc + (1 - z)


class ParaLSTMCell(_ProjectedCell):
    """ParaLSTM cell (CIFG, peepholes): state (N, H, 2) = [c, h] per channel; 2x2 Jacobian blocks."""

    jacobian_structure = ("block", 2)
    fused_kernels = {"triton": ("triton_paralstm", "paralstm_newton_triton"),
                     "cpu": ("cpu_fused", "paralstm_newton_cpu")}

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, recurrent_bound: float | None = None):
        super().__init__(input_size, hidden_size, 5, bias, recurrent_bound)  # a_f, a_c, a_o, p_f, p_o

    @property
    def state_shape(self) -> tuple:
        return (self.hidden_size, 2)

    def step_with_jacobian(self, u: torch.Tensor, s: torch.Tensor, jacobian: bool = True):
        """u (N, 3H), s (N, H, 2) -> s' (N, H, 2) [, ds'/ds (N, H, 2, 2), rows (c', h'), cols (c, h)]."""
        af, ac, ao, pf, po = self.weights()
        uf, uc, uo = u.chunk(3, dim=-1)
        cp, h = s[..., 0], s[..., 1]
        f = torch.sigmoid(af * h + uf + pf * cp)
        ct = torch.tanh(ac * h + uc)
        c = ct + f * (cp - ct)
        o = torch.sigmoid(ao * h + uo + po * c)
        tc = torch.tanh(c)
        s_new = torch.stack([c, o * tc], dim=-1)
        if not jacobian:
            return s_new
        df = f * (1 - f)
        dc_dcp = f + df * pf * (cp - ct)
        dc_dh = df * af * (cp - ct) + (1 - f) * (1 - ct * ct) * ac
        do = o * (1 - o)
        dh_dc = do * po * tc + o * (1 - tc * tc)  # dh'/dc through the peephole and tanh(c)
        A = torch.stack([torch.stack([dc_dcp, dc_dh], -1),
                         torch.stack([dh_dc * dc_dcp, do * ao * tc + dh_dc * dc_dh], -1)], -2)
        return s_new, A


_MODES = ("parallel", "sequential")


class ParallelRNN(nn.Module):
    """Run a recurrent cell over a sequence, in parallel by Newton or sequentially.

    cell: nn.Module with ``forward(x_t (N, *X), h_prev (N, *S)) -> h_t (N, *S)``, batch-agnostic.
    Optional extras the cell may have: ``state_shape`` (S), ``jacobian_structure`` (default for
    ``jacobian``), ``project(x)`` + ``step(u_t, h_prev)`` (input-only work hoisted out of the
    Newton loop), ``step_with_jacobian(u_t, h_prev) -> (h_t, A)`` (closed-form Jacobian) and
    ``fused_newton(...)`` (a kernel running all iterations; see newton_solve's fused_forward).
    ``closed_form=False`` ignores the last two and uses autograd Jacobians.
    jacobian: "diag" | ("block", K) | "dense" (None: the cell's ``jacobian_structure``, else "diag").
    The remaining options go to ``parazoo.ops.newton_solve``. ``last_info`` holds the NewtonInfo
    of the last parallel forward (iterations, residual, fallbacks; None after a sequential one), and
    ``solver_stats()`` reports it to the training callbacks (``parazoo.training.SolverStats``).
    """

    def __init__(self, cell: nn.Module, jacobian=None, state_shape=None, closed_form: bool = True,
                 check_structure: bool = True, **newton_options):
        super().__init__()
        if not isinstance(cell, nn.Module):
            raise ValueError(f"ParallelRNN: argument 'cell' must be an nn.Module, got {type(cell).__name__}")
        self.cell = cell
        self.structure = parse_structure(jacobian if jacobian is not None else getattr(cell, "jacobian_structure", "diag"),
                                         "ParallelRNN")
        self._state_shape = tuple(state_shape) if state_shape is not None else None
        self.closed_form = closed_form
        self.check_structure = check_structure
        self.newton_options = newton_options
        self._checked = False
        self.last_info = None

    def solver_stats(self) -> dict:
        """The last parallel forward's Newton statistics: ``newton_iters`` (the most iterations any
        chunk took), ``residual`` (final max-norm residual), ``fell_back`` (chunks solved
        sequentially); {} when the last forward was sequential or none has run."""
        info = self.last_info
        if info is None:
            return {}
        return {"newton_iters": info.max_iterations, "residual": info.residual, "fell_back": info.fell_back}

    @property
    def state_shape(self):
        return self._state_shape or (tuple(self.cell.state_shape) if hasattr(self.cell, "state_shape") else None)

    def _parts(self):
        cell = self.cell
        projected = hasattr(cell, "project") and hasattr(cell, "step")
        step = cell.step if projected else cell
        jac_fn = getattr(cell, "step_with_jacobian", None) if self.closed_form else None
        return projected, step, jac_fn

    def _probe(self, step, jac_fn, u, h0):
        n = min(2, u.shape[0])
        g = torch.Generator(device="cpu").manual_seed(0)
        noise = 0.5 * torch.randn(h0[:n].shape, generator=g, dtype=h0.dtype).to(h0.device)
        check_structure(step, self.structure, h0[:n] + noise, u[:n, 0], jac_fn, op="ParallelRNN")
        self._checked = True

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, mode: str = "parallel") -> torch.Tensor:
        """x (B, T, *X), h0 (B, *S) or None (zeros) -> h (B, T, *S)."""
        if mode not in _MODES:
            raise ValueError(f"ParallelRNN: argument 'mode' must be one of {_MODES}, got {mode!r}")
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"ParallelRNN: argument 'x' must be a tensor of shape (B, T, *X), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        projected, step, jac_fn = self._parts()
        u = self.cell.project(x) if projected else x  # (B, T, *U): input-only work, once
        if h0 is None:
            if self.state_shape is None:
                raise ValueError("ParallelRNN: give h0 (B, *S), or state_shape=S (the cell has no state_shape)")
            h0 = torch.zeros(x.shape[0], *self.state_shape, dtype=torch.promote_types(u.dtype, torch.float32),
                             device=x.device)
        elif not isinstance(h0, torch.Tensor) or h0.dim() < 1 or h0.shape[0] != x.shape[0] or \
                (self.state_shape is not None and tuple(h0.shape[1:]) != self.state_shape):
            want = (x.shape[0], *(self.state_shape or ("*S",)))
            raise ValueError(f"ParallelRNN: argument 'h0' must have shape {want}, got "
                             f"{tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0).__name__}")
        self.structure.check_state_shape(tuple(h0.shape[1:]), "ParallelRNN")
        if mode == "sequential":
            self.last_info = None
            return sequential_solve(step, u, h0, "ParallelRNN")
        if self.check_structure and not self._checked:
            self._probe(step, jac_fn, u, h0)
        fused = getattr(self.cell, "fused_newton", None) if self.closed_form else None
        h, self.last_info = newton_solve(step, u, h0, jacobian=self.structure, jac_fn=jac_fn,
                                         params=list(self.cell.parameters()), return_info=True,
                                         fused_forward=fused, **self.newton_options)
        return h


class _ParaRNNMixer(nn.Module):
    """in_proj (inside the cell) -> ParaRNN cell -> gated RMSNorm -> out_proj; state {"h": (B, *S)}."""

    cell_cls = None

    def __init__(self, d_model: int, expand: int = 1, recurrent_bound: float | None = 1.0, norm_eps: float = 1e-6,
                 chunk_size: int | None = None, max_iters: int = 20, on_fail: str = "sequential",
                 parallel_min_len: int = 2, backend: str = "auto"):
        super().__init__()
        self.d_model, self.d_inner = d_model, expand * d_model
        self.norm_eps = norm_eps
        self.parallel_min_len = parallel_min_len
        self.backend = backend
        cell = self.cell_cls(d_model, self.d_inner, recurrent_bound=recurrent_bound)
        self.rnn = ParallelRNN(cell, chunk_size=chunk_size, max_iters=max_iters, on_fail=on_fail, backend=backend)
        self.gate_proj = nn.Linear(d_model, self.d_inner, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        nn.init.normal_(self.out_proj.weight, std=1.0 / math.sqrt(self.d_inner))

    @staticmethod
    def readout(h: torch.Tensor) -> torch.Tensor:  # (B, T, *S) -> (B, T, d_inner)
        return h

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return {"h": torch.zeros(batch_size, *self.rnn.state_shape, device=device, dtype=dtype)}

    def forward(self, x: torch.Tensor, state: dict | None = None, mode: str | None = None):
        """x (B, T, d_model) -> y (B, T, d_model), state {"h": last state (B, *S)}.
        mode: "parallel" (Newton) | "sequential"; default sequential below ``parallel_min_len``."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{name}: argument 'x' must have shape (B, T, d_model={self.d_model}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        h0 = None
        if state is not None:
            h0 = check_state(state, batch_size=x.shape[0], keys=("h",), owner=name)["h"]
        if mode is None:
            mode = "sequential" if x.shape[1] < self.parallel_min_len else "parallel"
        h = self.rnn(x, h0, mode=mode)  # (B, T, *S)
        hr = self.readout(h)
        z = self.gate_proj(x)
        y = _gated_rms_norm(hr, z.to(hr.dtype), self.norm_weight, self.norm_eps, self.backend)
        return self.out_proj(y), {"h": h[:, -1]}


def _gated_rms_norm(h, z, weight, eps, backend):
    from parazoo.ops import rms_norm

    return rms_norm(h, weight.to(h.dtype), eps=eps, z=z, norm_before_gate=False, backend=backend)


@register_mixer("pararnn_gru")
class ParaGRUMixer(_ParaRNNMixer):
    """ParaGRU mixer: d_model -> (u, z) -> ParaGRU over time -> rmsnorm(h * silu(z)) -> d_model."""

    cell_cls = ParaGRUCell


@register_mixer("pararnn_lstm")
class ParaLSTMMixer(_ParaRNNMixer):
    """ParaLSTM mixer: the cell's h component (state[..., 1]) feeds the gated norm."""

    cell_cls = ParaLSTMCell

    @staticmethod
    def readout(h: torch.Tensor) -> torch.Tensor:
        return h[..., 1]
