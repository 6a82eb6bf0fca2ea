"""ParaGRU / ParaLSTM cells, ParallelRNN and the pararnn mixers.

Parallel (Newton) == sequential loop, implicit-adjoint gradients == BPTT, float32 and float64;
closed-form Jacobians == autograd; convergence on random and trained-like weights; the structure
probe; mixer state continuation and decoding (the shared contract tests cover the rest).
"""
import pytest
import torch
from torch import nn

from parazoo.arch.pararnn import ParaGRUCell, ParaGRUMixer, ParaLSTMCell, ParaLSTMMixer, ParallelRNN
from parazoo.ops.newton import check_structure, parse_structure
from parazoo.ops.testing import assert_close

CELLS = {"gru": ParaGRUCell, "lstm": ParaLSTMCell}


def make(kind, X=3, H=5, B=2, T=17, dtype=torch.float64, bound=None, scale=None, seed=0, **opts):
    torch.manual_seed(seed)
    cell = CELLS[kind](X, H, recurrent_bound=bound).to(dtype)
    if scale is not None:  # "trained-like": larger recurrent and input weights than at init
        with torch.no_grad():
            cell.recurrent.uniform_(-scale, scale)
            cell.in_proj.weight.mul_(scale)
    rnn = ParallelRNN(cell, backend="cpu", **opts)
    x = torch.randn(B, T, X, dtype=dtype, requires_grad=True)
    h0 = (0.5 * torch.randn(B, *cell.state_shape, dtype=dtype)).requires_grad_(True)
    return cell, rnn, x, h0


def grads(h, inputs):
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=h.dtype)
    return torch.autograd.grad((h * g).sum(), inputs, allow_unused=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_parallel_equals_sequential_and_bptt(kind, dtype):
    cell, rnn, x, h0 = make(kind, dtype=dtype)
    h = rnn(x, h0)
    assert rnn.last_info.converged and rnn.last_info.fell_back == 0
    h_seq = rnn(x, h0, mode="sequential")
    assert h.shape == (2, 17, *cell.state_shape) and h.dtype == dtype
    assert_close(h, h_seq, name=f"{kind} h")
    inputs = [x, h0, *cell.parameters()]
    names = ["x", "h0"] + [n for n, _ in cell.named_parameters()]
    for got, want, name in zip(grads(h, inputs), grads(h_seq, inputs), names):
        assert_close(got, want, name=f"{kind} grad {name}")


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("T", [1, 6])
def test_zero_state_short_and_chunked(kind, T):
    cell, rnn, x, _ = make(kind, T=T, chunk_size=4)
    h = rnn(x)
    h_seq = rnn(x, mode="sequential")
    assert_close(h, h_seq)
    for got, want in zip(grads(h, [x, cell.recurrent]), grads(h_seq, [x, cell.recurrent])):
        assert_close(got, want)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_closed_form_jacobian_matches_autograd(kind):
    cell, rnn, x, h0 = make(kind, bound=2.0, scale=1.5)
    u = cell.project(x[:, 0])
    s = h0 + torch.randn_like(h0)
    check_structure(cell.step, parse_structure(cell.jacobian_structure), s, u, jac_fn=cell.step_with_jacobian,
                    samples=2)
    # and the solver gives the same answer with the closed form and with autograd Jacobians
    auto = ParallelRNN(cell, closed_form=False, backend="cpu")
    assert_close(rnn(x, h0), auto(x, h0))


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_gradcheck_float64(kind):
    cell, rnn, x, h0 = make(kind, X=2, H=2, B=1, T=4)
    params = list(cell.parameters())
    assert torch.autograd.gradcheck(lambda x, h0, *ps: rnn(x, h0), (x, h0, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("weights", ["random", "trained-like"])
def test_converges_within_max_iters(kind, weights):
    scale = None if weights == "random" else 3.0
    cell, rnn, x, h0 = make(kind, H=16, B=2, T=256, scale=scale, max_iters=20, on_fail="raise")
    with torch.no_grad():
        h = rnn(x * 2, h0)
    info = rnn.last_info
    assert info.converged and info.max_iterations <= 12, info
    assert_close(h, rnn(x * 2, h0, mode="sequential"))


def test_recurrent_bound_keeps_weights_inside():
    cell = ParaGRUCell(3, 4, recurrent_bound=0.5)
    with torch.no_grad():
        cell.recurrent.fill_(100.0)
    assert all(float(w.detach().abs().max()) <= 0.5 for w in cell.weights())
    with pytest.raises(ValueError, match="recurrent_bound"):
        ParaGRUCell(3, 4, recurrent_bound=0.0)


class Mixing(nn.Module):
    """A cell whose channels interact through a full matrix: not diagonal."""

    state_shape = (3,)

    def __init__(self):
        super().__init__()
        self.W = nn.Linear(3, 3)

    def forward(self, x, h):
        return torch.tanh(self.W(h) + x)


def test_structure_probe_on_first_call():
    with pytest.raises(ValueError, match="mixes state elements"):
        ParallelRNN(Mixing(), jacobian="diag")(torch.randn(1, 4, 3))
    h = ParallelRNN(Mixing(), jacobian="dense", backend="cpu")(torch.randn(1, 4, 3))
    assert h.shape == (1, 4, 3)
    cell = ParaLSTMCell(3, 4)
    with pytest.raises(ValueError, match="mixes state elements"):
        ParallelRNN(cell, jacobian="diag")(torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="block size 3"):
        ParallelRNN(cell, jacobian=("block", 3))(torch.randn(1, 4, 3))


def test_parallel_rnn_bad_inputs():
    cell, rnn, x, h0 = make("gru")
    with pytest.raises(ValueError, match="'mode'"):
        rnn(x, h0, mode="scan")
    with pytest.raises(ValueError, match="'h0'"):
        rnn(x, h0[:, :3])
    with pytest.raises(ValueError, match="'x'"):
        rnn(x[0, 0])
    with pytest.raises(ValueError, match="'jacobian'"):
        ParallelRNN(cell, jacobian=("block",))
    with pytest.raises(ValueError, match="'cell'"):
        ParallelRNN(lambda x, h: h)  # not a module
    with pytest.raises(ValueError, match="state_shape"):
        ParallelRNN(nn.Identity())(x)


# ---- mixers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ParaGRUMixer, ParaLSTMMixer])
def test_mixer_modes_agree_and_state_continues(cls):
    torch.manual_seed(0)
    m = cls(16).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y, s = m(x, mode="parallel")
    y_seq, s_seq = m(x, mode="sequential")
    assert_close(y, y_seq, name="parallel vs sequential")
    assert_close(s["h"], s_seq["h"], name="final state")
    ya, sa = m(x[:, :4])
    yb, sb = m(x[:, 4:], sa)
    assert_close(torch.cat([ya, yb], 1), y, name="continuation")
    assert_close(sb["h"], s["h"])
    assert m.init_state(2)["h"].shape == (2, *m.rnn.state_shape)


def test_mixers_are_registered():
    from parazoo.arch import MIXERS

    assert MIXERS["pararnn_gru"] is ParaGRUMixer and MIXERS["pararnn_lstm"] is ParaLSTMMixer


# ---- fused Triton ParaGRU / ParaLSTM Newton kernels (interpreter) -------------------------------------------------
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_fused_triton_newton_matches_sequential_and_bptt(kind, triton_interpreter, monkeypatch):
    import importlib

    cell, _, x, h0 = make(kind, H=3, B=1, T=19, dtype=torch.float32)  # 2 tiles of 16 steps: the carry is used
    mod, fn = cell.fused_kernels["triton"]
    mod = importlib.import_module(f"parazoo.ops.newton.{mod}")
    calls = []
    real = getattr(mod, fn)
    monkeypatch.setattr(mod, fn, lambda *a: calls.append(1) or real(*a))
    rnn = ParallelRNN(cell, backend="triton")
    h = rnn(x, h0)
    assert calls, "the fused kernel was not used on the triton backend"
    assert rnn.last_info.converged and rnn.last_info.iterations[0] >= 1
    h_seq = rnn(x, h0, mode="sequential")
    assert_close(h, h_seq, name="fused h")
    inputs = [x, h0, *cell.parameters()]
    for got, want in zip(grads(h, inputs), grads(h_seq, inputs)):
        assert_close(got, want, name="fused grads")


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_fused_triton_failure_goes_through_on_fail(kind, triton_interpreter, monkeypatch):
    from parazoo.ops.newton import NewtonError, solver

    monkeypatch.setitem(solver._WARNED, "fallback", False)

    cell, _, x, h0 = make(kind, H=3, B=1, T=9, dtype=torch.float32, scale=3.0)
    with pytest.raises(NewtonError, match="did not converge"):
        ParallelRNN(cell, backend="triton", max_iters=0, on_fail="raise")(x, h0)
    rnn = ParallelRNN(cell, backend="triton", max_iters=0, on_fail="sequential")
    with pytest.warns(RuntimeWarning):
        h = rnn(x, h0)
    assert rnn.last_info.fell_back == 1
    assert_close(h, rnn(x, h0, mode="sequential"))


# ---- fused C Newton on CPU (float32) --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_fused_cpu_newton_used_matches_and_fails_cleanly(kind, monkeypatch):
    from parazoo.ops.newton import NewtonError
    from parazoo.ops.newton import cpu_fused

    cell, rnn, x, h0 = make(kind, H=6, T=23, dtype=torch.float32)
    calls = []
    fn = cell.fused_kernels["cpu"][1]
    real = getattr(cpu_fused, fn)
    monkeypatch.setattr(cpu_fused, fn, lambda *a: calls.append(1) or real(*a))
    h = rnn(x, h0)
    assert calls and rnn.last_info.converged
    assert_close(h, rnn(x, h0, mode="sequential"))
    with pytest.raises(NewtonError, match="did not converge"):
        ParallelRNN(cell, backend="cpu", max_iters=0, on_fail="raise")(x, h0)
    monkeypatch.setattr(cpu_fused.KERNEL, "load", lambda: None)  # no C compiler: the generic path runs
    assert_close(rnn(x, h0), h)


def test_solver_stats_reach_the_training_callback(monkeypatch):
    """ParallelRNN reports its Newton statistics through the solver_stats() protocol that
    parazoo.training.SolverStats reads (and compare plots): iterations, residual, fallbacks."""
    from types import SimpleNamespace

    from parazoo.training import SolverStats

    torch.manual_seed(0)
    model = nn.Sequential(ParaGRUMixer(16), ParaLSTMMixer(16))
    assert all(m.rnn.solver_stats() == {} for m in model)              # nothing has run yet
    y = model[1](model[0](torch.randn(2, 37, 16))[0])[0]
    stats = [m.rnn.solver_stats() for m in model]
    for m, st in zip(model, stats):
        assert st["newton_iters"] == m.rnn.last_info.max_iterations >= 1
        assert 0 <= st["residual"] < 1e-3 and st["fell_back"] == 0
    cb = SolverStats()
    cb.on_fit_start(None, model)
    trainer = SimpleNamespace(global_step=1, log_every_n_steps=1, loggers=[], logger=None)
    monkeypatch.setattr("parazoo.training.callbacks.solver_stats.log_step_metrics", lambda *a, **k: None)
    cb.on_train_batch_end(trainer, model, None, None, 0)
    iters = [st["newton_iters"] for st in stats]
    assert cb.last["solver/newton_iters_max"] == max(iters)
    assert cb.last["solver/newton_iters_mean"] == sum(iters) / 2
    model[0](torch.randn(2, 1, 16))                                       # T=1: sequential, no Newton
    assert model[0].rnn.solver_stats() == {}
