"""rms_norm: reference vs cpu vs triton (interpreter), forward and every gradient, gates, groups,
odd D, bf16 input, float64 gradcheck, custom-op registration, bad input."""
import pytest
import torch

from parazoo.ops import rms_norm
from parazoo.ops.rmsnorm import rms_norm_reference
from parazoo.ops.testing import assert_close, use_cpu_path

FAST = ["cpu", "cpu_torch", "triton"]
GATES = [None, True, False]  # None: no z; True/False: norm_before_gate


def _select(name, request, monkeypatch):
    """Backends: "cpu", the fused C loops (skipped without a compiler); "cpu_torch", the cpu
    backend's torch path, the fallback without a compiler; "triton": the kernels under the interpreter."""
    if name == "triton":
        request.getfixturevalue("triton_interpreter")
        return "triton"
    from parazoo.ops.rmsnorm import cpu_loop
    use_cpu_path("torch" if name == "cpu_torch" else "c", monkeypatch, cpu_loop.KERNEL)
    return "cpu"


@pytest.fixture(params=FAST)
def backend(request, monkeypatch):
    return _select(request.param, request, monkeypatch)


@pytest.fixture(params=["cpu", "cpu_torch"])
def cpu_backend(request, monkeypatch):
    return _select(request.param, request, monkeypatch)


def _inputs(shape, dtype, affine, gate, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = shape[-1]
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = (1 + 0.5 * torch.randn(D, generator=g, dtype=torch.float64)).to(dtype).requires_grad_() if affine else None
    z = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if gate is not None else None
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x, w, z, dy


def _run(inputs, backend, gate, group_size, eps=1e-5, cast=None):
    x, w, z, dy = inputs
    if cast is not None:  # float64 copies of the same values, as fresh leaves
        x, w, z = (t.detach().to(cast).requires_grad_() if t is not None else None for t in (x, w, z))
        dy = dy.to(cast)
    kw = dict(eps=eps, z=z, norm_before_gate=True if gate is None else gate, group_size=group_size)
    y = rms_norm_reference(x, w, **kw) if backend == "ref" else rms_norm(x, w, backend=backend, **kw)
    leaves = [t for t in (x, w, z) if t is not None]
    return (y, *torch.autograd.grad(y, leaves, dy))


def test_reference_matches_hand_computation():
    x = torch.tensor([[3.0, 4.0, 0.0, 1.0]], dtype=torch.float64)
    y = rms_norm_reference(x, eps=0.0)
    assert_close(y, x / (26.0 / 4) ** 0.5)
    # groups of 2: [3, 4] has rms sqrt(12.5), [0, 1] has rms sqrt(0.5)
    y = rms_norm_reference(x, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), eps=0.0, group_size=2)
    assert_close(y, torch.tensor([[3 / 12.5 ** 0.5, 8 / 12.5 ** 0.5, 0.0, 4 / 0.5 ** 0.5]], dtype=torch.float64))
    z = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64)
    silu = z * torch.sigmoid(z)
    assert_close(rms_norm_reference(x, z=z, eps=0.0), rms_norm_reference(x, eps=0.0) * silu)
    assert_close(rms_norm_reference(x, z=z, eps=0.0, norm_before_gate=False), rms_norm_reference(x * silu, eps=0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D,group_size", [(7, None), (33, 11), (100, None), (100, 25)])
@pytest.mark.parametrize("gate", GATES, ids=["nogate", "norm_then_gate", "gate_then_norm"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_forward_and_grads_match_reference(backend, dtype, D, group_size, gate, affine):
    inputs = _inputs((2, 5, D), dtype, affine, gate)
    got = _run(inputs, backend, gate, group_size)
    want = _run(inputs, "ref", gate, group_size, cast=torch.float64)
    names = ["y", "dx"] + (["dweight"] if affine else []) + (["dz"] if gate is not None else [])
    for name, a, e in zip(names, got, want):
        assert a.dtype == dtype, f"{name} dtype {a.dtype}"
        assert_close(a, e, name=name)


@pytest.mark.parametrize("shape", [(7,), (1, 1, 16), (3, 2, 4, 9), (37, 64)])
def test_leading_shapes(backend, shape):
    inputs = _inputs(shape, torch.float32, True, True)
    for name, a, e in zip(["y", "dx", "dw", "dz"], _run(inputs, backend, True, None),
                          _run(inputs, "ref", True, None, cast=torch.float64)):
        assert_close(a, e, name=name)


@pytest.mark.parametrize("gate", GATES, ids=["nogate", "norm_then_gate", "gate_then_norm"])
def test_channel_strided_inputs(backend, gate):
    """x, z and dy as (B, T, D) views of (B, D, T) tensors (channels not unit-stride, as Hymba
    normalises Mamba's output; the fused loops take them through the blocked transposing copy)
    match the reference on contiguous copies."""
    B, T, D = 2, 37, 40
    g = torch.Generator().manual_seed(3)
    mk = lambda: torch.randn(B, D, T, generator=g).transpose(1, 2)           # (B, T, D), stride(-1) = T
    x, z, dy = mk().requires_grad_(), (mk().requires_grad_() if gate is not None else None), mk()
    w = (1 + 0.5 * torch.randn(D, generator=g)).requires_grad_()
    assert x.stride(-1) != 1 and dy.stride(-1) != 1
    got = _run((x, w, z, dy), backend, gate, 20)
    want = _run((x, w, z, dy), "ref", gate, 20, cast=torch.float64)
    for name, a, e in zip(["y", "dx", "dweight", "dz"], got, want):
        assert_close(a, e, name=name)


@pytest.mark.parametrize("gate", GATES, ids=["nogate", "norm_then_gate", "gate_then_norm"])
def test_many_rows_threads_split_rows(cpu_backend, gate):
    """Enough rows (600 x 128) for the fused loops to split them across threads; dweight sums the
    threads' partial sums."""
    inputs = _inputs((600, 128), torch.float32, True, gate)
    got = _run(inputs, cpu_backend, gate, 32)
    want = _run(inputs, "ref", gate, 32, cast=torch.float64)
    for name, a, e in zip(["y", "dx", "dweight", "dz"], got, want):
        assert_close(a, e, name=name)


def test_bf16_input(backend):
    inputs = _inputs((4, 3, 48), torch.bfloat16, True, False)
    got = _run(inputs, backend, False, 16)
    want = _run(inputs, "ref", False, 16, cast=torch.float64)
    for name, a, e in zip(["y", "dx", "dw", "dz"], got, want):
        assert a.dtype == torch.bfloat16, name
        assert_close(a, e, name=name)


def test_fp32_weight_with_bf16_input(backend):
    x, _, z, dy = _inputs((3, 32), torch.bfloat16, False, True)
    w = torch.randn(32, requires_grad=True)
    y = rms_norm(x, w, z=z, backend=backend)
    assert y.dtype == torch.bfloat16
    (dw,) = torch.autograd.grad(y, [w], dy)
    assert dw.dtype == torch.float32
    yr = rms_norm_reference(x.double(), w.double(), z=z.double())
    assert_close(y, yr)


@pytest.mark.parametrize("gate", GATES, ids=["nogate", "norm_then_gate", "gate_then_norm"])
def test_gradcheck_float64(backend, gate):
    x, w, z, _ = _inputs((2, 3, 6), torch.float64, True, gate, seed=1)
    fn = lambda x, w, *z: rms_norm(x, w, eps=1e-5, z=z[0] if z else None,  # noqa: E731
                                   norm_before_gate=True if gate is None else gate, group_size=3, backend=backend)
    # the interpreter is slow: triton uses gradcheck's random-projection mode (few evaluations)
    assert torch.autograd.gradcheck(fn, (x, w) + ((z,) if z is not None else ()), fast_mode=backend == "triton")


def test_backends_agree_with_reference_dispatch():
    x, w, z, _ = _inputs((2, 8), torch.float32, True, True)
    assert_close(rms_norm(x, w, z=z, backend="reference"), rms_norm_reference(x, w, z=z))
    assert_close(rms_norm(x, w, z=z), rms_norm(x, w, z=z, backend="cpu"))  # auto on CPU tensors = cpu


def test_custom_op_registration():
    from parazoo.ops.rmsnorm import _rms_norm_op
    x, w, z, _ = _inputs((3, 8), torch.float32, True, True)
    torch.library.opcheck(_rms_norm_op, (x, w, z, 1e-6, False, 4, "cpu"))
    torch.library.opcheck(_rms_norm_op, (x, None, None, 1e-6, True, 8, "cpu"))


def test_torch_compile():
    x, w, z, dy = _inputs((3, 16), torch.float32, True, True)
    f = torch.compile(lambda x, w, z: rms_norm(x, w, z=z, norm_before_gate=False, backend="cpu"), fullgraph=True)
    y = f(x, w, z)
    assert_close(y, rms_norm_reference(x, w, z=z, norm_before_gate=False))


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=torch.zeros(2, 4, dtype=torch.int64)), "'x'.*floating"),
    (dict(weight=torch.ones(5)), r"'weight'.*\(4\).*\(5,\)"),
    (dict(z=torch.ones(2, 5)), r"'z'.*\(2, 4\).*\(2, 5\)"),
    (dict(group_size=3), "'group_size'.*D=4.*3"),
    (dict(group_size=0), "'group_size'"),
    (dict(eps=-1.0), "'eps'"),
    (dict(norm_before_gate=None), "'norm_before_gate'"),
    (dict(backend="cuda"), "backend must be one of"),
])
def test_bad_input(kwargs, match):
    args = dict(x=torch.ones(2, 4), weight=None, z=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rms_norm(args.pop("x"), args.pop("weight"), **args)
