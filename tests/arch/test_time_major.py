"""time_major_linear: (B, T, in) -> (B, out, T) equals torch.matmul(W, x^T); linear_from_time_major:
(B, in, T) -> (B, T, out) equals F.linear(x^T, W, bias); forward and backward."""
import pytest
import torch

import torch.nn.functional as F

from parazoo.arch.time_major import linear_from_time_major, time_major_linear
from parazoo.ops.testing import assert_close


def _pair(B, T, n_in, n_out, dtype, sliced):
    g = torch.Generator().manual_seed(B * 100 + T)
    wide = torch.randn(B, T, n_in + 3 if sliced else n_in, generator=g, dtype=dtype)
    x = wide[..., 1:n_in + 1] if sliced else wide                       # a slice: row stride n_in + 3
    W = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    dy = torch.randn(B, n_out, T, generator=g, dtype=dtype)
    return x, W, dy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,sliced", [(1, False), (3, True), (2, False)])
def test_matches_matmul_forward_and_backward(dtype, B, sliced):
    x, W, dy = _pair(B, 37, 11, 9, dtype, sliced)
    assert x.is_contiguous() != sliced
    outs = []
    for f in (time_major_linear, lambda a, w: torch.matmul(w, a.transpose(1, 2))):
        xi, Wi = x.clone().requires_grad_(), W.clone().requires_grad_()
        y = f(xi, Wi)
        y.backward(dy)
        outs.append((y, xi.grad, Wi.grad))
    (y, dx, dW), (ey, edx, edW) = outs
    assert y.shape == (B, 9, 37) and y.is_contiguous()
    assert_close(y, ey, dtype=dtype, name="y")
    assert_close(dx, edx, dtype=dtype, name="dx")
    assert_close(dW, edW, dtype=dtype, name="dW")


def test_gradcheck():
    x, W, _ = _pair(2, 5, 4, 3, torch.float64, True)
    assert torch.autograd.gradcheck(time_major_linear, (x.requires_grad_(), W.requires_grad_()))


def test_bf16_autocast_like_matmul():
    """Under CPU bf16 autocast the output is bfloat16 like matmul's, and the gradients come back in
    the parameters' float32, close to matmul's."""
    x, W, dy = _pair(2, 16, 8, 6, torch.float32, False)
    res = []
    for f in (time_major_linear, lambda a, w: torch.matmul(w, a.transpose(1, 2))):
        xi, Wi = x.clone().requires_grad_(), W.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = f(xi, Wi)
        y.backward(dy.to(y.dtype))
        res.append((y, xi.grad, Wi.grad))
    (y, dx, dW), (ey, edx, edW) = res
    assert y.dtype == ey.dtype == torch.bfloat16
    assert dx.dtype == dW.dtype == torch.float32
    assert_close(y.float(), ey.float(), dtype=torch.bfloat16, name="y")
    assert_close(dx, edx, dtype=torch.bfloat16, name="dx")
    assert_close(dW, edW, dtype=torch.bfloat16, name="dW")


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="time_major_linear"):
        time_major_linear(torch.randn(2, 5, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="time_major_linear"):
        time_major_linear(torch.randn(5, 4), torch.randn(3, 4))


def _pair_tm(B, T, n_in, n_out, dtype, sliced):
    """x (B, n_in, T) (a slice along T of a wider tensor when sliced), W, bias, dy (B, T, n_out)."""
    g = torch.Generator().manual_seed(B * 100 + T + 1)
    wide = torch.randn(B, n_in, T + 2 if sliced else T, generator=g, dtype=dtype)
    x = wide[..., 1:T + 1] if sliced else wide
    W = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    bias = torch.randn(n_out, generator=g, dtype=dtype)
    dy = torch.randn(B, T, n_out, generator=g, dtype=dtype)
    return x, W, bias, dy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,sliced,with_bias", [(1, False, False), (3, True, True), (2, False, True)])
def test_from_time_major_matches_linear(dtype, B, sliced, with_bias):
    x, W, bias, dy = _pair_tm(B, 37, 11, 9, dtype, sliced)
    bias = bias if with_bias else None
    outs = []
    for f in (linear_from_time_major, lambda a, w, c: F.linear(a.transpose(1, 2), w, c)):
        xi, Wi = x.clone().requires_grad_(), W.clone().requires_grad_()
        bi = bias.clone().requires_grad_() if bias is not None else None
        y = f(xi, Wi, bi)
        y.backward(dy)
        outs.append((y, xi.grad, Wi.grad, bi.grad if bi is not None else torch.zeros(())))
    (y, dx, dW, db), (ey, edx, edW, edb) = outs
    assert y.shape == (B, 37, 9) and y.is_contiguous()
    for name, a, e in (("y", y, ey), ("dx", dx, edx), ("dW", dW, edW), ("dbias", db, edb)):
        assert_close(a, e, dtype=dtype, name=name)


def test_from_time_major_gradcheck_and_autocast():
    x, W, bias, dy = _pair_tm(2, 5, 4, 3, torch.float64, True)
    assert torch.autograd.gradcheck(linear_from_time_major, (x.clone().requires_grad_(), W.clone().requires_grad_(),
                                                             bias.clone().requires_grad_()))
    x, W, _, dy = _pair_tm(2, 16, 8, 6, torch.float32, False)
    res = []
    for f in (linear_from_time_major, lambda a, w: F.linear(a.transpose(1, 2), w)):
        xi, Wi = x.clone().requires_grad_(), W.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = f(xi, Wi)
        y.backward(dy.to(y.dtype))
        res.append((y, xi.grad, Wi.grad))
    (y, dx, dW), (ey, edx, edW) = res
    assert y.dtype == ey.dtype == torch.bfloat16 and dx.dtype == dW.dtype == torch.float32
    for name, a, e in (("y", y.float(), ey.float()), ("dx", dx, edx), ("dW", dW, edW)):
        assert_close(a, e, dtype=torch.bfloat16, name=name)
    with pytest.raises(ValueError, match="linear_from_time_major"):
        linear_from_time_major(torch.randn(2, 5, 4), torch.randn(3, 4))
