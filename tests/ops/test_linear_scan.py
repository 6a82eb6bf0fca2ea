"""linear_scan: reference vs fused C loop vs pure-torch fallback vs Triton (interpreter)."""
import pytest
import torch

from parazoo.ops import linear_scan
from parazoo.ops.linear_scan import cpu as ls_cpu
from parazoo.ops.linear_scan import linear_scan_ref
from parazoo.ops.testing import assert_close, use_cpu_path

BACKENDS = ["cpu", "cpu_fallback", "triton"]


@pytest.fixture
def backend(request, monkeypatch):
    """'cpu_fallback' = the cpu backend with the C kernel unavailable (pure-torch chunked path)."""
    name = request.param
    if name == "triton":
        request.getfixturevalue("triton_interpreter")
        return name
    use_cpu_path("torch" if name == "cpu_fallback" else "c", monkeypatch, ls_cpu.KERNEL)
    return "cpu"


def make(B, T, chan=(3,), dtype=torch.float32, h0=True, n_h0=None):
    a = (0.5 + 0.5 * torch.rand(B, T, *chan, dtype=torch.float64)).to(dtype)  # decays in (0.5, 1)
    a = a * torch.where(torch.rand_like(a, dtype=torch.float64) < 0.1, -1.0, 1.0).to(dtype)  # some sign flips
    b = torch.randn(B, T, *chan, dtype=dtype)
    s = torch.randn(n_h0 or B, *chan, dtype=dtype) if h0 else None
    return [x.requires_grad_() if x is not None else None for x in (a, b, s)]


def check_against_reference(backend, a, b, h0, reverse, **kw):
    y = linear_scan(a, b, h0, reverse=reverse, backend=backend, **kw)
    dbl = [None if x is None else x.detach().double().requires_grad_() for x in (a, b, h0)]
    ref = linear_scan(*dbl, reverse=reverse, backend="reference", **kw)
    assert y.dtype == a.dtype and y.shape == a.shape
    assert_close(y, ref, dtype=a.dtype, name="h")
    g = torch.randn_like(ref)
    ins = [x for x in (a, b, h0) if x is not None]
    got = torch.autograd.grad(y, ins, g.to(y.dtype))
    want = torch.autograd.grad(ref, [x for x in dbl if x is not None], g)
    for n, x, gx, wx in zip("abh", ins, got, want):
        assert gx.dtype == x.dtype
        assert_close(gx, wx, dtype=a.dtype, name=f"d{n}")


# (B, T, chan): T = 1, odd, 63, one past a power of two (several Triton tiles: 16 steps under the
# interpreter, 64 on GPU), long. The interpreter runs tl.associative_scan element by element in
# Python, so Triton cases keep few channels.
CASES = [(1, 1, (3,)), (2, 7, (5,)), (3, 63, (2, 3)), (2, 257, (4,)), (1, 1000, (3,))]
TRITON_CASES = [(1, 1, (3,)), (2, 7, (2,)), (1, 63, (3,)), (2, 257, (1,))]  # T = 1000: slow tier
DIRECTIONS = [(False, True), (True, True), (False, False), (True, False)]  # (reverse, with_h0)
BACKEND_CASES = [(be, *c, *d) for be in BACKENDS for c in (TRITON_CASES if be == "triton" else CASES)
                 for d in (DIRECTIONS[:2] if be == "triton" else DIRECTIONS)]
BACKEND_CASES += [("triton", 2, 41, (3,), *d) for d in DIRECTIONS[2:]]


@pytest.mark.parametrize("backend,B,T,chan,reverse,with_h0", BACKEND_CASES, indirect=["backend"])
def test_matches_reference_fp32(backend, B, T, chan, reverse, with_h0):
    check_against_reference(backend, *make(B, T, chan, h0=with_h0), reverse)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_reference_fp64(backend, reverse):
    check_against_reference(backend, *make(2, 131, (2,), dtype=torch.float64), reverse)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_keep_dtype(backend, dtype):
    a, b, h0 = make(2, 40, (3,), dtype=dtype)
    y = linear_scan(a, b, h0, backend=backend)
    assert y.dtype == dtype
    ref = linear_scan_ref(a.double(), b.double(), h0.double())
    assert_close(y, ref, dtype=dtype)
    y.float().sum().backward()
    assert a.grad.dtype == dtype and h0.grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_cu_seqlens_equals_separate_runs(backend, reverse, with_h0):
    lens = [5, 1, 0, 12, 3]  # an empty and a length-1 sequence included
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    a, b, _ = make(1, sum(lens), (4,), h0=False)
    h0 = torch.randn(len(lens), 4, requires_grad=True) if with_h0 else None
    y = linear_scan(a, b, h0, reverse=reverse, cu_seqlens=cu, backend=backend)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        ai, bi = a.detach()[:, s:e].double().requires_grad_(), b.detach()[:, s:e].double().requires_grad_()
        hi = None if h0 is None else h0.detach()[i:i + 1].double().requires_grad_()
        yi = linear_scan_ref(ai, bi, hi, reverse=reverse)
        assert_close(y[:, s:e], yi, dtype=torch.float32, name=f"h of sequence {i}")
        if e > s:
            (yi * g[:, s:e].double()).sum().backward()
            assert_close(a.grad[:, s:e], ai.grad, dtype=torch.float32, name=f"da of sequence {i}")
            assert_close(b.grad[:, s:e], bi.grad, dtype=torch.float32, name=f"db of sequence {i}")
            if hi is not None:
                assert_close(h0.grad[i:i + 1], hi.grad, dtype=torch.float32, name=f"dh0 of sequence {i}")
        elif h0 is not None:
            assert (h0.grad[i] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_fp64(backend, reverse):
    a, b, h0 = [x.detach().double().requires_grad_() for x in make(1, 5, (2,))]
    # fast_mode (random projections) keeps the interpreter's calls few
    assert torch.autograd.gradcheck(lambda *x: linear_scan(*x, reverse=reverse, backend=backend), (a, b, h0),
                                    fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_non_contiguous_inputs(backend):
    a, b, h0 = make(2, 30, (2, 3))
    at, bt = a.detach().transpose(2, 3), b.detach().transpose(2, 3)  # (B, T, 3, 2) views
    assert not at.is_contiguous()
    y = linear_scan(at, bt, h0.detach().transpose(1, 2), backend=backend)
    assert_close(y, linear_scan_ref(at.double(), bt.double(), h0.detach().transpose(1, 2).double()))


def test_empty_sequence_and_channels():
    a, b, _ = make(2, 0, (3,), h0=False)
    assert linear_scan(a, b, backend="cpu").shape == (2, 0, 3)
    a, b, _ = make(2, 4, (0,), h0=False)
    assert linear_scan(a, b, backend="cpu").shape == (2, 4, 0)


def test_auto_is_cpu_for_cpu_tensors():
    a, b, h0 = make(2, 9)
    assert_close(linear_scan(a, b, h0), linear_scan(a, b, h0, backend="reference"))


@pytest.mark.parametrize("bad,match", [
    (dict(b=torch.randn(2, 8, 4)), r"'b' must have shape \(2, 8, 3\), got \(2, 8, 4\)"),
    (dict(a=torch.randn(2)), r"'a' must have shape \(B, T, \*\), got \(2,\)"),
    (dict(a=torch.ones(2, 8, 3, dtype=torch.int64)), r"'a' must be a floating tensor, got dtype torch.int64"),
    (dict(b=torch.ones(2, 8, 3, dtype=torch.complex64)), r"'b' must be a real floating tensor, got complex"),
    (dict(h0=torch.randn(2, 4)), r"'h0' must have shape \(2, 3\), got \(2, 4\)"),
    (dict(h0=torch.randn(2, 3, device="meta")), r"'h0' is on meta but 'a' is on cpu"),
    (dict(reverse=1), r"'reverse' must be a bool, got int"),
    (dict(backend="cuda"), r"backend must be one of"),
])
def test_bad_input_raises_value_error(bad, match):
    kw = dict(a=torch.rand(2, 8, 3), b=torch.randn(2, 8, 3), h0=None, reverse=False, backend="cpu")
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        linear_scan(**kw)


@pytest.mark.parametrize("cu,match", [
    (torch.tensor([0, 3, 8], dtype=torch.float32), r"'cu_seqlens' must be an int32/int64 tensor"),
    (torch.tensor([0, 3, 7]), r"must start at 0, be non-decreasing and end at the sequence length 8"),
    (torch.tensor([0, 5, 3, 8]), r"non-decreasing"),
])
def test_bad_cu_seqlens(cu, match):
    with pytest.raises(ValueError, match=match):
        linear_scan(torch.rand(1, 8, 3), torch.randn(1, 8, 3), cu_seqlens=cu)


def test_cu_seqlens_errors_on_batch_and_h0_rows():
    cu = torch.tensor([0, 3, 8])
    with pytest.raises(ValueError, match="need batch size 1, got 2"):
        linear_scan(torch.rand(2, 8, 3), torch.randn(2, 8, 3), cu_seqlens=cu)
    with pytest.raises(ValueError, match=r"'h0' must have shape \(2, 3\), got \(1, 3\)"):
        linear_scan(torch.rand(1, 8, 3), torch.randn(1, 8, 3), torch.randn(1, 3), cu_seqlens=cu)


def test_opcheck():
    a, b, h0 = make(2, 9, (3,))
    op = torch.ops.parazoo.linear_scan.default
    torch.library.opcheck(op, (a, b, h0, True, "cpu"))


def test_torch_compile():
    a, b, h0 = make(2, 17, (3,))

    def f(a, b, h0):
        return linear_scan(a * 1.0, b, h0, backend="cpu").sin().sum()

    compiled = torch.compile(f, fullgraph=False, backend="aot_eager")
    loss = compiled(a, b, h0)
    got = torch.autograd.grad(loss, (a, b, h0))
    want = torch.autograd.grad(f(a, b, h0), (a, b, h0))
    assert_close(loss, f(a, b, h0).detach())
    for x, y in zip(got, want):
        assert_close(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("reverse", [False, True])
def test_long_sequences_slow(backend, reverse):
    chan = (1,) if backend == "triton" else (2, 33)
    check_against_reference(backend, *make(2, 1000, chan), reverse)
    if backend != "triton":
        check_against_reference(backend, *make(2, 5000, chan), reverse)
