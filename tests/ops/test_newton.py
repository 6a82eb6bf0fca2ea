"""newton_solve: Newton over the sequence == the sequential loop, implicit adjoint == BPTT.

Two user-defined cells written here (one diagonal, one with 2x2 blocks, plus a small dense one)
are solved with autograd Jacobians and with closed forms; references are the sequential loop
(``sequential_solve``) and ordinary autograd through it. ParaGRU / ParaLSTM are in
tests/arch/test_pararnn.py.
"""
import warnings

import pytest
import torch
from torch import nn

from parazoo.ops import newton_solve
from parazoo.ops.newton import NewtonError, check_structure, parse_structure, sequential_solve
from parazoo.ops.newton import solver as newton_solver
from parazoo.ops.testing import assert_close


class DiagCell(nn.Module):
    """h' = tanh(a * h + W x + b): diagonal Jacobian (1 - h'^2) a."""

    def __init__(self, X=3, H=5, scale=0.8):
        super().__init__()
        self.a = nn.Parameter(scale * (2 * torch.rand(H) - 1))
        self.W = nn.Linear(X, H)

    def forward(self, x, h):
        return torch.tanh(self.a * h + self.W(x))

    def jac(self, x, h):
        out = self.forward(x, h)
        return out, (1 - out * out) * self.a


class BlockCell(nn.Module):
    """State (H, 2); each channel's pair is rotated and squashed: h' = tanh(R_c h_c + W x): 2x2 blocks."""

    def __init__(self, X=3, H=4, scale=0.7):
        super().__init__()
        self.R = nn.Parameter(scale * torch.randn(H, 2, 2) / 2)
        self.W = nn.Linear(X, 2 * H)
        self.H = H

    def forward(self, x, h):  # x (N, X), h (N, H, 2)
        pre = (self.R @ h.unsqueeze(-1)).squeeze(-1) + self.W(x).reshape(-1, self.H, 2)
        return torch.tanh(pre)

    def jac(self, x, h):
        out = self.forward(x, h)
        return out, (1 - out * out).unsqueeze(-1) * self.R  # d out_i / d h_j = (1 - out_i^2) R_ij


class DenseCell(nn.Module):
    """h' = tanh(W_h h + W_x x): a full (small) Jacobian."""

    def __init__(self, X=3, H=4, scale=0.6):
        super().__init__()
        self.Wh = nn.Parameter(scale * torch.randn(H, H) / H ** 0.5)
        self.Wx = nn.Linear(X, H)

    def forward(self, x, h):
        return torch.tanh(h @ self.Wh.T + self.Wx(x))


CELLS = {
    "diag": (DiagCell, "diag", (5,)),
    "block": (BlockCell, ("block", 2), (4, 2)),
    "dense": (DenseCell, "dense", (4,)),
}


def make(kind, B=2, T=11, dtype=torch.float64, h0=True, seed=0, H=None):
    torch.manual_seed(seed)
    cls, structure, S = CELLS[kind]
    if H is not None:
        S = (H, *S[1:])
    cell = (cls(H=H) if H else cls()).to(dtype)
    x = torch.randn(B, T, 3, dtype=dtype, requires_grad=True)
    s0 = torch.randn(B, *S, dtype=dtype, requires_grad=True) if h0 else None
    return cell, structure, S, x, s0


def grads(h, inputs, seed=1):
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(seed), dtype=h.dtype)
    return torch.autograd.grad((h * g).sum(), inputs, allow_unused=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,closed_form", [("diag", False), ("diag", True), ("block", False), ("block", True),
                                              ("dense", False)])
def test_newton_equals_sequential_and_bptt(kind, dtype, closed_form):
    cell, structure, S, x, h0 = make(kind, dtype=dtype)
    h, info = newton_solve(cell, x, h0, jacobian=structure, jac_fn=cell.jac if closed_form else None,
                           return_info=True, backend="cpu")
    assert info.converged and info.fell_back == 0 and info.iterations[0] <= 10, info
    h_ref = sequential_solve(cell, x, h0)
    assert h.dtype == dtype and h.shape == (2, 11, *S)
    assert_close(h, h_ref, name="h")
    inputs = [x, h0, *cell.parameters()]
    for got, want, name in zip(grads(h, inputs), grads(h_ref, inputs), ["x", "h0", "param0", "param1", "param2"]):
        assert_close(got, want, name=f"grad {name}")


@pytest.mark.parametrize("T", [1, 2, 7])
@pytest.mark.parametrize("kind", ["diag", "block"])
def test_short_and_odd_lengths(kind, T):
    cell, structure, S, x, h0 = make(kind, T=T, B=3)
    h = newton_solve(cell, x, h0, jacobian=structure, backend="cpu")
    h_ref = sequential_solve(cell, x, h0)
    assert_close(h, h_ref, name=f"h T={T}")
    for got, want in zip(grads(h, [x, h0, cell.a if kind == "diag" else cell.R]),
                         grads(h_ref, [x, h0, cell.a if kind == "diag" else cell.R])):
        assert_close(got, want, name=f"grad T={T}")


def test_t1_needs_no_newton_step():
    cell, structure, S, x, h0 = make("diag", T=1)
    _, info = newton_solve(cell, x, h0, return_info=True, backend="cpu")
    assert info.iterations == [0]  # the initial guess f(h0, x_0) is exact for one step


@pytest.mark.parametrize("kind", ["diag", "block"])
@pytest.mark.parametrize("chunk_size", [1, 4, 5])
def test_chunks_carry_state_and_adjoint(kind, chunk_size):
    cell, structure, S, x, h0 = make(kind, T=13)
    h, info = newton_solve(cell, x, h0, jacobian=structure, chunk_size=chunk_size, return_info=True, backend="cpu")
    assert info.chunks == -(-13 // chunk_size)
    h_ref = sequential_solve(cell, x, h0)
    assert_close(h, h_ref, name="chunked h")
    inputs = [x, h0, *cell.parameters()]
    for got, want in zip(grads(h, inputs), grads(h_ref, inputs)):
        assert_close(got, want, name="chunked grad")


def test_zero_h0_by_state_shape_and_inits():
    cell, structure, S, x, _ = make("diag")
    h_ref = sequential_solve(cell, x, torch.zeros(2, *S, dtype=x.dtype))
    for init in ["f0", "zeros", "picard"]:
        h = newton_solve(cell, x, state_shape=S, init=init, backend="cpu")
        assert_close(h, h_ref, name=f"init={init}")
    h, info = newton_solve(cell, x, state_shape=S, omega=0.5, max_iters=80, return_info=True, backend="cpu")
    assert_close(h, h_ref, name="damped")
    _, info1 = newton_solve(cell, x, state_shape=S, return_info=True, backend="cpu")
    assert info.iterations[0] > info1.iterations[0]  # damping slows Newton down: it is applied


def test_check_every_and_reference_backend():
    cell, structure, S, x, h0 = make("block")
    h_ref = sequential_solve(cell, x, h0)
    h, info = newton_solve(cell, x, h0, jacobian=structure, check_every=3, return_info=True, backend="cpu")
    assert info.iterations[0] % 3 == 0
    assert_close(h, h_ref)
    assert_close(newton_solve(cell, x, h0, jacobian=structure, backend="reference"), h_ref)


def test_closure_params_get_gradients():
    torch.manual_seed(0)
    a = torch.rand(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True)
    f = lambda xt, h: torch.tanh(a * h + xt)  # noqa: E731
    h = newton_solve(f, x, state_shape=(4,), params=[a], backend="cpu")
    h_ref = sequential_solve(f, x, torch.zeros(2, 4, dtype=torch.float64))
    for got, want in zip(grads(h, [x, a]), grads(h_ref, [x, a])):
        assert_close(got, want)


@pytest.mark.parametrize("kind", ["diag", "block"])
def test_gradcheck_float64(kind):
    cell, structure, S, x, h0 = make(kind, B=1, T=4, H=2)
    params = list(cell.parameters())

    def fn(x, h0, *ps):
        return newton_solve(cell, x, h0, jacobian=structure, params=params, backend="cpu")

    assert torch.autograd.gradcheck(fn, (x, h0, *params), eps=1e-6, atol=1e-7)


def test_backward_never_runs_through_iterations():
    cell, structure, S, x, h0 = make("diag")
    h = newton_solve(cell, x, h0, backend="cpu")
    assert type(h.grad_fn).__name__.startswith("NewtonAdjoint")


def test_no_grad_path_and_dtype():
    cell, structure, S, x, h0 = make("diag", dtype=torch.float32)
    with torch.no_grad():
        h = newton_solve(cell, x, h0, backend="cpu")
    assert h.grad_fn is None and h.dtype == torch.float32
    assert_close(h, sequential_solve(cell, x, h0))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["diag", "block"])
def test_triton_scans_under_interpreter(kind, triton_interpreter):
    cell, structure, S, x, h0 = make(kind, T=9, dtype=torch.float32)
    h = newton_solve(cell, x, h0, jacobian=structure, backend="triton")
    h_ref = sequential_solve(cell, x, h0)
    assert_close(h, h_ref)
    for got, want in zip(grads(h, [x, h0]), grads(h_ref, [x, h0])):
        assert_close(got, want)


# ---- structure probe --------------------------------------------------------------------------------
def test_structure_probe_accepts_true_structures_and_closed_forms():
    for kind in ["diag", "block"]:
        cell, structure, S, x, h0 = make(kind)
        check_structure(cell, parse_structure(structure), h0, x[:, 0], jac_fn=cell.jac)


def test_structure_probe_rejects_mixing_cells_and_wrong_closed_forms():
    cell, _, S, x, _ = make("dense")
    with pytest.raises(ValueError, match="mixes state elements"):
        check_structure(cell, parse_structure("diag"), torch.randn(2, *S, dtype=x.dtype), x[:, 0])
    cell, structure, S, x, h0 = make("block")
    with pytest.raises(ValueError, match="mixes state elements"):
        check_structure(cell, parse_structure("diag"), h0, x[:, 0])
    wrong = lambda xt, h: (cell(xt, h), 2 * cell.jac(xt, h)[1])  # noqa: E731
    with pytest.raises(ValueError, match="closed-form Jacobian"):
        check_structure(cell, parse_structure(structure), h0, x[:, 0], jac_fn=wrong)


# ---- failure handling ---------------------------------------------------------------------------------
class Chaotic(nn.Module):
    """h' = sin(4 h + x): |df/dh| up to 4, chaotic; Newton from f(h0, x) needs about T steps
    (each Newton step makes at least one more step exact)."""

    def forward(self, x, h):
        return torch.sin(4 * h + x)


def chaotic(T=48):
    torch.manual_seed(0)
    return Chaotic(), torch.randn(1, T, 3, dtype=torch.float64), torch.full((1, 3), 0.3, dtype=torch.float64)


def test_chaotic_cell_raise():
    f, x, h0 = chaotic()
    with pytest.raises(NewtonError, match="did not converge|NaN"):
        newton_solve(f, x, h0, max_iters=4, on_fail="raise", backend="cpu")


def test_chaotic_cell_warn_returns_last_iterate():
    f, x, h0 = chaotic()
    with pytest.warns(RuntimeWarning, match="on_fail='warn'"):
        h, info = newton_solve(f, x, h0, max_iters=3, on_fail="warn", return_info=True, backend="cpu")
    assert not info.converged and info.fell_back == 0 and info.iterations == [3] and torch.isfinite(h).all()
    assert info.residual > 1.0  # the residual that failed the test is reported


def test_chaotic_cell_converges_in_at_most_T_newton_steps():
    f, x, h0 = chaotic(T=12)
    h, info = newton_solve(f, x, h0, max_iters=12, on_fail="raise", return_info=True, backend="cpu")
    assert info.converged and info.iterations[0] <= 12
    assert_close(h, sequential_solve(f, x, h0))


def test_chaotic_cell_sequential_fallback_is_exact_and_warns_once(monkeypatch):
    monkeypatch.setitem(newton_solver._WARNED, "fallback", False)
    f, x, h0 = chaotic()
    with pytest.warns(RuntimeWarning, match="one step at a time"):
        h, info = newton_solve(f, x, h0, max_iters=4, return_info=True, backend="cpu")
    assert info.fell_back == 1 and not info.converged
    assert torch.equal(h, sequential_solve(f, x, h0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second fallback is silent (warned once per process)
        newton_solve(f, x, h0, max_iters=4, backend="cpu")


def test_nan_during_solve_never_returned():
    """A cell that overflows to inf: Newton iterates are not finite and neither is the exact solve."""
    f = lambda xt, h: 10.0 * h * h + xt  # noqa: E731
    x = torch.ones(1, 40, 2, dtype=torch.float64)
    h0 = torch.ones(1, 2, dtype=torch.float64)
    for on_fail in ["sequential", "raise", "warn"]:
        with pytest.raises(NewtonError, match="NaN|inf|converge"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                newton_solve(f, x, h0, on_fail=on_fail, max_iters=50, backend="cpu")


def test_nan_in_newton_falls_back_when_the_true_solution_is_finite(monkeypatch):
    """Newton iterates that go NaN (sqrt of a negative iterate) while the true sequence is finite."""
    monkeypatch.setitem(newton_solver._WARNED, "fallback", False)
    f = lambda xt, h: torch.sqrt(h) * 1.9 + xt  # noqa: E731  true orbit stays positive for x >= 0
    x = torch.rand(1, 30, 3, dtype=torch.float64) * 0.01
    h0 = torch.full((1, 3), 4.0, dtype=torch.float64)
    with pytest.warns(RuntimeWarning):
        h, info = newton_solve(f, x, h0, init="zeros", omega=2.0, max_iters=30, return_info=True, backend="cpu")
    assert torch.isfinite(h).all()
    assert_close(h, sequential_solve(f, x, h0))


# ---- bad input ------------------------------------------------------------------------------------------
def test_bad_inputs():
    cell, structure, S, x, h0 = make("diag")
    with pytest.raises(ValueError, match="'f'"):
        newton_solve(3, x, h0)
    with pytest.raises(ValueError, match="'x'"):
        newton_solve(cell, x[0, 0], h0)
    with pytest.raises(ValueError, match="'x'.*floating"):
        newton_solve(cell, x.long(), h0)
    with pytest.raises(ValueError, match="'h0'.*B=2"):
        newton_solve(cell, x, h0[:1])
    with pytest.raises(ValueError, match="state_shape"):
        newton_solve(cell, x)
    with pytest.raises(ValueError, match="'jacobian'"):
        newton_solve(cell, x, h0, jacobian="block")
    with pytest.raises(ValueError, match="block size 2"):
        newton_solve(cell, x, h0, jacobian=("block", 2))
    for kw in [dict(on_fail="retry"), dict(omega=0.0), dict(max_iters=-1), dict(check_every=0), dict(init="ones"),
               dict(chunk_size=0), dict(atol=-1.0), dict(backend="gpu")]:
        with pytest.raises(ValueError, match=list(kw)[0]):
            newton_solve(cell, x, h0, **kw)
    with pytest.raises(ValueError, match="returned shape"):
        newton_solve(lambda xt, h: h[:, :2], x, h0)
    with pytest.raises(ValueError, match="Jacobian for jacobian='diag' must have shape"):
        newton_solve(cell, x, h0, jac_fn=lambda xt, h: (cell(xt, h), h[:, :1]))
