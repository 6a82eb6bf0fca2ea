"""The shared ops infrastructure: backend dispatch, argument validation, the compiled CPU loops
and the comparison helper every op test relies on."""
import ctypes
import types
import uuid
import warnings

import pytest
import torch

from parazoo.ops import _backend, _cpu_jit
from parazoo.ops._backend import resolve_backend
from parazoo.ops._validate import check_cu_seqlens, check_power_of_two, check_same_device, check_tensor
from parazoo.ops.testing import assert_close

CUDA_LIKE = types.SimpleNamespace(is_cuda=True)  # stands in for a CUDA tensor (only .is_cuda is read)


# ---- resolve_backend ----
@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("PARAZOO_BACKEND", raising=False)
    return monkeypatch


def test_auto_is_cpu_for_cpu_tensors_and_triton_for_cuda(clean_env):
    x = torch.ones(2)
    assert resolve_backend("auto", x) == "cpu"
    assert resolve_backend(None, x) == "cpu"
    assert resolve_backend("auto", x, None) == "cpu"
    assert resolve_backend("auto", x, CUDA_LIKE) == "triton"
    clean_env.setattr(_backend, "triton_available", lambda: False)
    assert resolve_backend("auto", CUDA_LIKE) == "cpu"           # no triton: the torch path on CUDA


def test_explicit_backends(clean_env):
    x = torch.ones(2)
    assert resolve_backend("cpu", x) == "cpu"
    assert resolve_backend("reference", x) == "reference"
    clean_env.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", x) == "triton"


def test_env_replaces_auto_only(clean_env):
    x = torch.ones(2)
    clean_env.setenv("PARAZOO_BACKEND", "reference")
    assert resolve_backend("auto", x) == "reference"
    assert resolve_backend("cpu", x) == "cpu"                     # an explicit argument wins
    clean_env.setenv("PARAZOO_BACKEND", "auto")
    assert resolve_backend("auto", x) == "cpu"
    clean_env.setenv("PARAZOO_BACKEND", "fast")
    with pytest.raises(ValueError, match="PARAZOO_BACKEND.*'fast'"):
        resolve_backend("auto", x)


def test_unknown_backend_name(clean_env):
    with pytest.raises(ValueError, match="myop: backend must be one of.*'cuda'"):
        resolve_backend("cuda", torch.ones(1), op="myop")


def test_triton_needs_cuda_or_interpreter(clean_env):
    clean_env.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="myop: backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.ones(1), op="myop")
    assert resolve_backend("triton", CUDA_LIKE) == "triton"
    clean_env.setattr(_backend, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        resolve_backend("triton", CUDA_LIKE)


# ---- _validate ----
@pytest.mark.parametrize("call,match", [
    (lambda: check_tensor("a", None, op="f"), "f: argument 'a' is required, got None"),
    (lambda: check_tensor("a", [1.0], op="f"), "f: argument 'a' must be a torch.Tensor, got list"),
    (lambda: check_tensor("a", torch.ones(2, dtype=torch.int32), op="f"), "'a' must be a floating tensor, got dtype torch.int32"),
    (lambda: check_tensor("a", torch.ones(2, dtype=torch.complex64), op="f"), "'a' must be a real floating tensor"),
    (lambda: check_tensor("a", torch.ones(2), op="f", dtypes=[torch.float64]), r"'a' must have dtype in \[torch.float64\], got torch.float32"),
    (lambda: check_tensor("a", torch.ones(2), op="f", ndim=(3, 4)), r"'a' must have 3 or 4 dimensions, got shape \(2,\)"),
    (lambda: check_tensor("a", torch.ones(2, 3), op="f", shape=(2, 4)), r"'a' must have shape \(2, 4\), got \(2, 3\)"),
    (lambda: check_tensor("a", torch.ones(2, 3), op="f", shape=(2, 3, None)), r"'a' must have shape \(2, 3, \*\), got \(2, 3\)"),
    (lambda: check_tensor("b", torch.ones(5), op="f", shape=("n",), dims={"n": 4}),
     r"f: argument 'b' has size 5 in dim 0 \(n\), but n=4 .*expected shape \(4\), got \(5,\)"),
])
def test_check_tensor_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_check_tensor_accepts_and_binds_dims():
    dims = {}
    a = torch.ones(2, 3)
    assert check_tensor("a", a, shape=("b", "d"), dims=dims) is a
    assert dims == {"b": 2, "d": 3}
    assert check_tensor("c", torch.ones(3), shape=("d",), dims=dims) is not None
    assert check_tensor("z", None, optional=True) is None
    assert check_tensor("i", torch.ones(2, dtype=torch.int64), floating=False) is not None
    assert check_tensor("c", torch.ones(2, dtype=torch.complex64), allow_complex=True) is not None


def test_check_same_device():
    a = torch.ones(1)
    assert check_same_device("f", a=a, b=None, c=torch.ones(2)) == torch.device("cpu")
    with pytest.raises(ValueError, match="f: argument 'b' is on meta but 'a' is on cpu"):
        check_same_device("f", a=a, b=torch.ones(1, device="meta"))


def test_check_power_of_two():
    assert check_power_of_two("chunk_size", 64) == 64
    for bad in (0, 3, 48, -4, True, 2.0):
        with pytest.raises(ValueError, match=f"f: argument 'chunk_size' must be a positive power of two, got {bad!r}"):
            check_power_of_two("chunk_size", bad, op="f")


@pytest.mark.parametrize("cu,batch,match", [
    (torch.tensor([0.0, 4.0]), 1, "'cu_seqlens' must be an int32/int64 tensor, got torch.float32"),
    (torch.tensor([[0, 4]]), 1, r"'cu_seqlens' must have shape \(n_seqs \+ 1,\), got \(1, 2\)"),
    (torch.tensor([0]), 1, r"'cu_seqlens' must have shape \(n_seqs \+ 1,\)"),
    (torch.tensor([0, 4]), 2, "need batch size 1, got 2"),
    (torch.tensor([1, 4]), 1, r"must start at 0.*got \[1, 4\]"),
    (torch.tensor([0, 3]), 1, r"end at the sequence length 4, got \[0, 3\]"),
    (torch.tensor([0, 3, 2, 4]), 1, "non-decreasing"),
])
def test_check_cu_seqlens(cu, batch, match):
    with pytest.raises(ValueError, match=match):
        check_cu_seqlens(cu, 4, batch, op="f")


def test_check_cu_seqlens_accepts():
    assert check_cu_seqlens(None, 4, 3) is None
    cu = torch.tensor([0, 0, 3, 4], dtype=torch.int32)
    assert check_cu_seqlens(cu, 4, 1) is cu


# ---- _cpu_jit ----
_SRC = """
void axpy_f32(const float* x, float* y, float a, int64_t n) {
    #pragma omp parallel for
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}
"""
_FUNCS = {"axpy_f32": [_cpu_jit.PTR, _cpu_jit.PTR, _cpu_jit.F32, _cpu_jit.I64]}


def test_cpu_kernel_compiles_and_runs(monkeypatch, tmp_path):
    monkeypatch.delenv("PARAZOO_NO_CC", raising=False)
    if not _cpu_jit.cc_available():
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("PARAZOO_CACHE", str(tmp_path))
    kern = _cpu_jit.CKernel(f"axpy_{uuid.uuid4().hex[:8]}", _SRC, _FUNCS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                            # a working compiler warns nothing
        lib = kern.load()
    assert lib is not None and kern.load() is lib                 # compiled once, then cached
    assert list(tmp_path.glob("*.so")), "the shared object is cached under PARAZOO_CACHE"
    x = torch.arange(1000, dtype=torch.float32)
    y = torch.ones(1000)
    lib.axpy_f32(_cpu_jit.ptr(x), _cpu_jit.ptr(y), ctypes.c_float(2.0), 1000)
    assert torch.equal(y, 1 + 2 * x)
    # a second CKernel with the same source reuses the cached build
    again = _cpu_jit.CKernel(kern.name, _SRC, _FUNCS).load()
    assert again is not None


def test_no_cc_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("PARAZOO_NO_CC", "1")
    monkeypatch.setenv("PARAZOO_CACHE", str(tmp_path))
    assert not _cpu_jit.cc_available()
    kern = _cpu_jit.CKernel(f"nocc_{uuid.uuid4().hex[:8]}", _SRC, _FUNCS)
    with pytest.warns(RuntimeWarning, match="unavailable.*pure-torch") as rec:
        assert kern.load() is None
        assert kern.load() is None
        assert _cpu_jit.CKernel(kern.name, _SRC, _FUNCS).load() is None
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert not list(tmp_path.glob("*.so"))


def test_shared_float32_exp(monkeypatch, tmp_path):
    """``_cpu_math.cpu_exp_f32`` in a vectorised loop: <= 2 ulp from torch.exp on [-87, 88], the
    documented clamps at the limits, NaN passed through."""
    monkeypatch.delenv("PARAZOO_NO_CC", raising=False)
    if not _cpu_jit.cc_available():
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("PARAZOO_CACHE", str(tmp_path))
    from parazoo.ops._cpu_math import EXP_F32_SOURCE

    src = EXP_F32_SOURCE + """
void exp_f32(const float* x, float* y, int64_t n) {
    _Pragma("omp simd")
    for (int64_t i = 0; i < n; ++i) y[i] = cpu_exp_f32(x[i]);
}
"""
    lib = _cpu_jit.CKernel(f"exp_{uuid.uuid4().hex[:8]}", src, {"exp_f32": [_cpu_jit.PTR, _cpu_jit.PTR, _cpu_jit.I64]}).load()
    grid = torch.linspace(-87.0, 88.0, 1_000_003)
    x = torch.cat([grid, torch.tensor([-1e4, -float("inf"), 1e4, float("inf"), float("nan")])])
    y = torch.empty_like(x)
    lib.exp_f32(_cpu_jit.ptr(x), _cpu_jit.ptr(y), x.numel())
    ref = torch.exp(grid)
    ulp = torch.nextafter(ref, torch.full_like(ref, float("inf"))) - ref
    assert ((y[:-5].double() - ref.double()).abs() / ulp.double()).max() <= 2.0
    lo, hi = torch.exp(torch.tensor(-87.0)), torch.exp(torch.tensor(88.0))
    assert_close(y[-5:-3], lo.expand(2), rtol=3e-7, atol=0, name="exp below -87")
    assert_close(y[-3:-1], hi.expand(2), rtol=3e-7, atol=0, name="exp above 88")
    assert y[-1].isnan()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_transpose_copy(dtype):
    """``_cpu_transpose.transpose_copy`` equals t.transpose(1, 2).contiguous(): a slice of a wider
    tensor (row stride > width), sizes off the 32-tile grid, a transposed source, bf16 (torch path)."""
    from parazoo.ops._cpu_transpose import transpose_copy

    wide = torch.randn(3, 70, 131).to(dtype)
    for t in (wide[:, :, 5:100], wide[:, 3:67, :], wide.transpose(1, 2), torch.randn(2, 1, 1).to(dtype)):
        out = transpose_copy(t)
        assert out.is_contiguous() and torch.equal(out, t.transpose(1, 2).contiguous())
    big = torch.randn(2, 300, 400).to(dtype)                      # enough for the threaded loop
    assert torch.equal(transpose_copy(big), big.transpose(1, 2).contiguous())
    with pytest.raises(ValueError, match="3 dimensions"):
        transpose_copy(torch.ones(2, 3))


def test_ptr_rejects_non_contiguous():
    assert _cpu_jit.ptr(None) is None
    with pytest.raises(ValueError, match="contiguous"):
        _cpu_jit.ptr(torch.ones(3, 4).t())


# ---- testing.assert_close ----
def test_assert_close_passes_within_dtype_tolerance():
    e = torch.linspace(-3, 3, 50, dtype=torch.float64)
    assert_close(e.float(), e)                                    # float32 rounding is fine
    assert_close(e + 1e-12, e)


def test_assert_close_fails_on_a_real_difference():
    e = torch.linspace(-3, 3, 50, dtype=torch.float64)
    a = e.clone()
    a[7] += 0.05
    with pytest.raises(AssertionError, match="out"):
        assert_close(a.float(), e, name="out")
    with pytest.raises(AssertionError):                           # float64 is held to float64 tolerances
        assert_close(e * (1 + 1e-6), e)


def test_assert_close_fails_on_nan_and_shape():
    e = torch.ones(4, dtype=torch.float64)
    a = torch.ones(4)
    a[2] = float("nan")
    with pytest.raises(AssertionError, match="NaN"):
        assert_close(a, e)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.ones(3), e)
