"""The mixer contract, checked for every entry of parazoo.arch.MIXERS (new mixers are covered
without new test code):

- forward(x, state=None) -> (y, state) maps (B, T, d) -> (B, T, d);
- causality: changing tokens after t leaves outputs up to t unchanged;
- state continuation: forward on x[:, :t] then x[:, t:] with the state equals forward on x, for
  several t and one token at a time (decoding); init_state() behaves as no state;
- batch rows are independent;
- bf16 autocast runs and stays within 5% relative RMS error of float32;
- gradients reach every parameter and are finite;
- torch.compile (inductor, CPU) gives eager's outputs and gradients, with fullgraph=True for every
  mixer but ParaRNN's (its Newton loop stops on a data-dependent convergence test) [slow tier];
- bad inputs (wrong width, wrong rank, state of another batch size) raise ValueError.
"""
import pytest
import torch

from parazoo.arch import MIXERS
from parazoo.ops.testing import assert_close, rel_rms_error

D_MODEL = 64
T = 13  # odd, not a multiple of any chunk
NAMES = sorted(MIXERS)


def make(name, dtype=torch.float32):
    torch.manual_seed(0)
    m = MIXERS[name](D_MODEL).to(dtype)
    m.eval()
    return m


def inputs(B=2, T=T, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D_MODEL, generator=g, dtype=dtype)


def test_registry_has_attention():
    assert "attention" in MIXERS


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_state(name):
    m = make(name)
    x = inputs()
    y, state = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert state is not None
    assert torch.isfinite(y).all()
    y0, _ = m(x, m.init_state(2))
    assert_close(y0, y, name=f"{name}: forward with init_state() vs no state")


@pytest.mark.parametrize("name", NAMES)
def test_causal(name):
    m = make(name)
    x = inputs()
    t = 6
    x2 = x.clone()
    x2[:, t:] = torch.randn_like(x2[:, t:]) * 3
    y1, _ = m(x)
    y2, _ = m(x2)
    assert_close(y2[:, :t], y1[:, :t], name=f"{name}: outputs before the change")
    assert not torch.allclose(y2[:, t:], y1[:, t:]), f"{name}: outputs after t ignore the inputs after t"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("split", [1, 5, T - 1])
def test_state_continuation(name, split):
    m = make(name, torch.float64)
    x = inputs(dtype=torch.float64)
    y, _ = m(x)
    ya, s = m(x[:, :split])
    yb, _ = m(x[:, split:], s)
    assert_close(torch.cat([ya, yb], 1), y, name=f"{name}: split at {split}")


@pytest.mark.parametrize("name", NAMES)
def test_decoding_token_by_token(name):
    m = make(name, torch.float64)
    x = inputs(dtype=torch.float64)
    y, _ = m(x)
    s = m.init_state(x.shape[0], dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        yt, s = m(x[:, t:t + 1], s)
        outs.append(yt)
    assert_close(torch.cat(outs, 1), y, name=f"{name}: one token at a time")


@pytest.mark.parametrize("name", NAMES)
def test_state_continuation_float32(name):
    m = make(name)
    x = inputs()
    y, _ = m(x)
    ya, s = m(x[:, :7])
    yb, _ = m(x[:, 7:], s)
    assert_close(torch.cat([ya, yb], 1), y, name=f"{name}: fp32 split")


@pytest.mark.parametrize("name", NAMES)
def test_batch_rows_independent(name):
    m = make(name)
    x = inputs(B=3)
    y, _ = m(x)
    y1, _ = m(x[1:2])
    assert_close(y[1:2], y1, name=f"{name}: row 1 alone vs in a batch")


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_close_to_fp32(name):
    m = make(name)
    x = inputs()
    y32, _ = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, _ = m(x)
    assert torch.isfinite(y16).all()
    err = rel_rms_error(y16.float(), y32)
    assert err < 5e-2, f"{name}: bf16 autocast relative RMS error {err:.3g} >= 5e-2"


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_and_reach_parameters(name):
    m = make(name)
    m.train()
    x = inputs().requires_grad_(True)
    y, _ = m(x)
    (y.square().mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname} has a non-finite gradient"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_matches_eager(name):
    """Training through the compiled mixer: the custom ops' fakes must promise the strides their CPU
    implementations return (inductor asserts them) and no op may break the graph (fullgraph)."""
    m = make(name)
    m.train()
    x = inputs(T=37)
    fullgraph = not name.startswith("pararnn")
    out = {}
    for mode, fn in (("eager", m), ("compiled", torch.compile(m, fullgraph=fullgraph))):
        xi = x.clone().requires_grad_(True)
        y, _ = fn(xi)
        out[mode] = (y, *torch.autograd.grad(y.square().sum(), [xi, *m.parameters()], allow_unused=True))
    for i, (a, e) in enumerate(zip(out["compiled"], out["eager"])):
        assert (a is None) == (e is None), i
        if a is not None:
            assert_close(a, e, name=f"{name} output {i} (0: y, 1: dx, then parameters)")


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name):
    m = make(name)
    with pytest.raises(ValueError):
        m(torch.randn(2, T, D_MODEL + 1))
    with pytest.raises(ValueError):
        m(torch.randn(T, D_MODEL))
    _, s = m(inputs(B=2))
    with pytest.raises(ValueError, match="batch"):
        m(inputs(B=3), s)
