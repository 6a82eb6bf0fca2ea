"""block_scan: reference vs fused C loop vs pure-torch fallback vs Triton (interpreter)."""
import pytest
import torch

from parazoo.ops import block_scan
from parazoo.ops.block_scan import block_scan_ref
from parazoo.ops.block_scan import cpu as bs_cpu
from parazoo.ops.testing import assert_close, use_cpu_path

BACKENDS = ["cpu", "cpu_fallback", "triton"]


@pytest.fixture
def backend(request, monkeypatch):
    """'cpu_fallback' = the cpu backend with the C kernel unavailable (pure-torch chunked path)."""
    name = request.param
    if name == "triton":
        request.getfixturevalue("triton_interpreter")
        return name
    use_cpu_path("torch" if name == "cpu_fallback" else "c", monkeypatch, bs_cpu.KERNEL)
    return "cpu"


def make(B, T, K, chan=(3,), dtype=torch.float64, h0=True):
    """Blocks with spectral radius < 1 on average (a stable recurrence), built in float64."""
    A = torch.randn(B, T, *chan, K, K, dtype=torch.float64) * (0.9 / K ** 0.5)
    b = torch.randn(B, T, *chan, K, dtype=torch.float64)
    s = torch.randn(B, *chan, K, dtype=torch.float64) if h0 else None
    return [None if x is None else x.to(dtype).requires_grad_() for x in (A, b, s)]


def check_against_reference(backend, A, b, h0, reverse):
    y = block_scan(A, b, h0, reverse=reverse, backend=backend)
    dbl = [None if x is None else x.detach().double().requires_grad_() for x in (A, b, h0)]
    ref = block_scan_ref(*dbl, reverse=reverse)
    assert y.dtype == b.dtype and y.shape == b.shape
    assert_close(y, ref, dtype=b.dtype, name="h")
    g = torch.randn_like(ref)
    ins = [x for x in (A, b, h0) if x is not None]
    got = torch.autograd.grad(y, ins, g.to(y.dtype))
    want = torch.autograd.grad(ref, [x for x in dbl if x is not None], g)
    for n, x, gx, wx in zip(["A", "b", "h0"], ins, got, want):
        assert gx.dtype == x.dtype
        assert_close(gx, wx, dtype=b.dtype, name=f"d{n}")


# (B, T, K, chan): T = 1, odd, 63, one past a power of two, long; Triton chunks are 8 steps under
# the interpreter (128 on GPU), so every Triton case with T > 8 crosses chunks. The interpreter
# is slow per time step, so Triton cases are shorter.
CASES = [(1, 1, 2, (3,)), (2, 7, 3, (2,)), (3, 63, 2, (2, 3)), (2, 257, 4, (3,)), (1, 1000, 2, (5,))]
TRITON_CASES = [(1, 1, 2, (3,)), (2, 7, 3, (2,)), (1, 20, 2, (2,)), (1, 19, 4, (1,))]
DIRECTIONS = [(False, True), (True, True), (False, False), (True, False)]  # (reverse, with_h0)
BACKEND_CASES = [(be, *c, *d) for be in BACKENDS for c in (TRITON_CASES if be == "triton" else CASES)
                 for d in (DIRECTIONS[:2] if be == "triton" else DIRECTIONS)]
BACKEND_CASES += [("triton", 1, 17, 2, (2,), *d) for d in DIRECTIONS[2:]]


@pytest.mark.parametrize("backend,B,T,K,chan,reverse,with_h0", BACKEND_CASES, indirect=["backend"])
def test_matches_reference_fp32(backend, B, T, K, chan, reverse, with_h0):
    check_against_reference(backend, *make(B, T, K, chan, dtype=torch.float32, h0=with_h0), reverse)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("K", [1, 2, 3, 4, 5])
def test_every_small_k_fp64(backend, K):
    B, T = (1, 9) if backend == "triton" else (2, 45)
    check_against_reference(backend, *make(B, T, K, (2,)), reverse=K % 2 == 0)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_large_k_dense_block(backend):
    """One dense D x D block (Newton on a dense Jacobian): the generic-K C loop, and Triton's
    fallback to the pure-torch chunked scan above MAX_K."""
    from parazoo.ops.block_scan.triton_scan import MAX_K

    check_against_reference(backend, *make(1, 9, MAX_K + 3, (1,), dtype=torch.float32), reverse=True)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_keep_dtype(backend, dtype):
    A, b, h0 = make(1, 9, 2, (2,), dtype=dtype)
    y = block_scan(A, b, h0, backend=backend)
    assert y.dtype == dtype
    assert_close(y, block_scan_ref(A.double(), b.double(), h0.double()), dtype=dtype)
    y.float().sum().backward()
    assert A.grad.dtype == dtype and h0.grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_fp64(backend, reverse):
    A, b, h0 = make(1, 5, 2, (1,))  # fast_mode (random projections) keeps the interpreter's calls few
    assert torch.autograd.gradcheck(lambda *x: block_scan(*x, reverse=reverse, backend=backend), (A, b, h0),
                                    fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_non_contiguous_inputs(backend):
    A, b, h0 = [x.detach() for x in make(1, 10, 2, (2, 3))]
    At, bt, ht = A.transpose(2, 3), b.transpose(2, 3), h0.transpose(1, 2)
    assert not At.is_contiguous()
    assert_close(block_scan(At, bt, ht, backend=backend), block_scan_ref(At, bt, ht))


def test_k1_equals_linear_scan():
    from parazoo.ops import linear_scan

    A, b, h0 = [x.detach() for x in make(2, 30, 1, (3,))]
    assert_close(block_scan(A, b, h0, backend="cpu")[..., 0],
                 linear_scan(A[..., 0, 0], b[..., 0], h0[..., 0], backend="cpu"))


def test_adjoint_is_transposed_reverse_scan():
    """The Newton adjoint lambda_t = g_t + A_{t+1}^T lambda_{t+1} equals autograd's dL/db."""
    A, b, h0 = make(2, 25, 2, (3,))
    y = block_scan(A, b, h0, backend="cpu")
    g = torch.randn_like(y)
    (y * g).sum().backward()
    A_next_T = torch.cat([A.detach()[:, 1:], torch.zeros_like(A[:, :1])], 1).transpose(-1, -2)
    lam = block_scan(A_next_T, g, reverse=True, backend="cpu")
    assert_close(lam, b.grad)


def test_empty_sequence():
    A, b, _ = make(2, 0, 2, h0=False)
    assert block_scan(A, b, backend="cpu").shape == (2, 0, 3, 2)


@pytest.mark.parametrize("bad,match", [
    (dict(A=torch.randn(2, 8, 3, 2, 3)), r"'A' must have shape \(2, 8, 3, 2, 2\), got \(2, 8, 3, 2, 3\)"),
    (dict(b=torch.randn(2, 8)), r"'b' must have shape \(B, T, \*, K\), got \(2, 8\)"),
    (dict(A=torch.ones(2, 8, 3, 2, 2, dtype=torch.int32)), r"'A' must be a floating tensor, got dtype torch.int32"),
    (dict(A=torch.ones(2, 8, 3, 2, 2, dtype=torch.complex64)), r"'A' must be a real floating tensor, got complex"),
    (dict(h0=torch.randn(2, 3)), r"'h0' must have shape \(2, 3, 2\), got \(2, 3\)"),
    (dict(h0=torch.randn(2, 3, 2, device="meta")), r"'h0' is on meta but 'A' is on cpu"),
    (dict(reverse="yes"), r"'reverse' must be a bool, got str"),
])
def test_bad_input_raises_value_error(bad, match):
    kw = dict(A=torch.randn(2, 8, 3, 2, 2), b=torch.randn(2, 8, 3, 2), h0=None, reverse=False, backend="cpu")
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        block_scan(**kw)


def test_opcheck_and_compile():
    A, b, h0 = make(1, 6, 2, (2,), dtype=torch.float32)
    torch.library.opcheck(torch.ops.parazoo.block_scan.default, (A, b, h0, True, "cpu"))

    def f(A, b, h0):
        return block_scan(A, b * 2.0, h0, backend="cpu").cos().sum()

    loss = torch.compile(f, fullgraph=False, backend="aot_eager")(A, b, h0)
    got = torch.autograd.grad(loss, (A, b, h0))
    want = torch.autograd.grad(f(A, b, h0), (A, b, h0))
    for x, y in zip(got, want):
        assert_close(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_long_sequences_slow(backend):
    if backend == "triton":
        check_against_reference(backend, *make(1, 300, 2, (2,), dtype=torch.float32), reverse=True)
    else:
        check_against_reference(backend, *make(2, 4000, 3, (2, 5), dtype=torch.float32), reverse=True)
