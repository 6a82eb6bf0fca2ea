"""time_major_linear: (B, T, in) -> (B, out, T) equals torch.matmul(W, x^T); linear_from_time_major:
(B, in, T) -> (B, T, out) equals F.linear(x^T, W, bias); forward and backward."""
import pytest
import torch
import torch.nn.functional as F

from parazoo.arch.time_major import linear_from_time_major, time_major_linear
from parazoo.ops.testing import assert_close

# kind -> (function under test, torch's equivalent, does x carry time last (B, in, T))
KINDS = {
    "into": (lambda x, w, b=None: time_major_linear(x, w), lambda x, w, b=None: torch.matmul(w, x.transpose(1, 2)), False),
    "from": (linear_from_time_major, lambda x, w, b=None: F.linear(x.transpose(1, 2), w, b), True),
}


def _inputs(kind, B, T, n_in, n_out, dtype, sliced):
    """x ((B, T, n_in) or (B, n_in, T); a slice of a wider tensor when sliced), W, bias, dy."""
    tm_in = KINDS[kind][2]
    g = torch.Generator().manual_seed(B * 100 + T)
    shape = (B, n_in, T + 2 if sliced else T) if tm_in else (B, T, n_in + 2 if sliced else n_in)
    wide = torch.randn(shape, generator=g, dtype=dtype)
    x = wide[..., 1:shape[-1] - 1] if sliced else wide
    W = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    bias = torch.randn(n_out, generator=g, dtype=dtype)
    dy = torch.randn((B, T, n_out) if tm_in else (B, n_out, T), generator=g, dtype=dtype)
    return x, W, bias, dy


def _run_both(kind, x, W, bias, dy, autocast=False):
    """[(y, dx, dW, dbias or None)] for the function under test and torch's equivalent."""
    out = []
    for f in KINDS[kind][:2]:
        xi, Wi = x.clone().requires_grad_(), W.clone().requires_grad_()
        bi = bias.clone().requires_grad_() if bias is not None else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = f(xi, Wi, bi)
        y.backward(dy.to(y.dtype))
        out.append((y, xi.grad, Wi.grad, bi.grad if bi is not None else None))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,sliced", [(1, False), (3, True), (2, False)])
def test_matches_torch_forward_and_backward(kind, dtype, B, sliced):
    x, W, bias, dy = _inputs(kind, B, 37, 11, 9, dtype, sliced)
    bias = bias if kind == "from" and B > 1 else None                     # the bias rides along in F.linear
    assert x.is_contiguous() != sliced
    got, want = _run_both(kind, x, W, bias, dy)
    assert got[0].shape == want[0].shape and got[0].is_contiguous()
    for name, a, e in zip(("y", "dx", "dW", "dbias"), got, want):
        if e is not None:
            assert_close(a, e, dtype=dtype, name=name)


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck(kind):
    x, W, _, _ = _inputs(kind, 2, 5, 4, 3, torch.float64, True)
    f = KINDS[kind][0]
    assert torch.autograd.gradcheck(lambda a, w: f(a, w), (x.requires_grad_(), W.requires_grad_()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_bf16_autocast_like_torch(kind):
    """Under CPU bf16 autocast the output is bfloat16 like torch's, and the gradients come back in
    the inputs' float32, close to torch's."""
    x, W, _, dy = _inputs(kind, 2, 16, 8, 6, torch.float32, False)
    (y, dx, dW, _), (ey, edx, edW, _) = _run_both(kind, x, W, None, dy, autocast=True)
    assert y.dtype == ey.dtype == torch.bfloat16
    assert dx.dtype == dW.dtype == torch.float32
    for name, a, e in (("y", y.float(), ey.float()), ("dx", dx, edx), ("dW", dW, edW)):
        assert_close(a, e, dtype=torch.bfloat16, name=name)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="time_major_linear"):
        time_major_linear(torch.randn(2, 5, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="time_major_linear"):
        time_major_linear(torch.randn(5, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="linear_from_time_major"):
        linear_from_time_major(torch.randn(2, 5, 4), torch.randn(3, 4))


def test_empty_batch():
    for kind in KINDS:
        x, W, _, _ = _inputs(kind, 1, 5, 4, 3, torch.float32, False)
        x = x[:0].requires_grad_()
        y = KINDS[kind][0](x, W)
        assert y.shape[0] == 0
        y.sum().backward()
        assert x.grad.shape == x.shape
