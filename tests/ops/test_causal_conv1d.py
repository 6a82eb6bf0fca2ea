"""causal_conv1d / causal_conv1d_update: reference vs cpu vs triton (interpreter), forward and
every gradient (x, weight, bias, initial_states, through y and final_states), widths 2-4, odd L,
packed sequences, decode steps, float64 gradcheck, bf16, upstream delegation, bad input."""
import sys
import types

import pytest
import torch

from parazoo.ops import causal_conv1d, causal_conv1d_update
from parazoo.ops.causal_conv1d import causal_conv1d_reference
from parazoo.ops.testing import assert_close, use_cpu_path


@pytest.fixture(params=["cpu", "cpu_torch", "triton"])
def backend(request, monkeypatch):
    """Backends: "cpu", the fused C loops (skipped without a compiler); "cpu_torch", the cpu backend's
    F.conv1d path, the fallback without a compiler; "triton": the kernels under the interpreter."""
    if request.param == "triton":
        request.getfixturevalue("triton_interpreter")
        return "triton"
    from parazoo.ops.causal_conv1d import cpu_loop
    use_cpu_path("torch" if request.param == "cpu_torch" else "c", monkeypatch, cpu_loop.KERNEL)
    return "cpu"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _inputs(B, D, L, W, dtype=torch.float32, bias=True, init=True, n_states=None, seed=0, channel_last=False):
    g = _gen(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    if channel_last:  # (B, L, D) memory, as Mamba's in_proj output transposed
        x = torch.randn(B, L, D, **f64).to(dtype).transpose(1, 2).requires_grad_()
    else:
        x = torch.randn(B, D, L, **f64).to(dtype).requires_grad_()
    w = (0.5 * torch.randn(D, W, **f64)).to(dtype).requires_grad_()
    b = torch.randn(D, **f64).to(dtype).requires_grad_() if bias else None
    h = torch.randn(n_states or B, D, W - 1, **f64).to(dtype).requires_grad_() if init else None
    return x, w, b, h


def _run(backend, x, w, b, h, activation, final, cu=None, seed=1, cast=None):
    """Forward, then gradients of a random linear function of (y, final_states)."""
    if cast is not None:
        x, w, b, h = (t.detach().to(cast).requires_grad_() if t is not None else None for t in (x, w, b, h))
    out = causal_conv1d(x, w, b, activation, h, final, cu, backend=backend)
    outs = out if final else (out,)
    g = _gen(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() for o in outs)
    leaves = [t for t in (x, w, b, h) if t is not None]
    return (*outs, *torch.autograd.grad(loss, leaves))


def _names(b, h, final):
    return ["y"] + (["final_states"] if final else []) + ["dx", "dweight"] + (["dbias"] if b is not None else []) \
        + (["dinitial_states"] if h is not None else [])


def _check(got, want, names):
    assert len(got) == len(want) == len(names)
    for name, a, e in zip(names, got, want):
        assert_close(a, e, name=name)


def test_reference_matches_hand_computation():
    x = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    w = torch.tensor([[10.0, 1.0]], dtype=torch.float64)           # y_t = 10 x_{t-1} + x_t + b
    h = torch.tensor([[[5.0]]], dtype=torch.float64)
    y, fin = causal_conv1d_reference(x, w, torch.tensor([0.5], dtype=torch.float64), None, h, True)
    assert_close(y, torch.tensor([[[50 + 1 + 0.5, 10 + 2 + 0.5, 20 + 3 + 0.5]]], dtype=torch.float64))
    assert_close(fin, torch.tensor([[[3.0]]], dtype=torch.float64))
    y = causal_conv1d_reference(x, w, activation="silu")
    pre = torch.tensor([[[1.0, 12.0, 23.0]]], dtype=torch.float64)
    assert_close(y, pre * torch.sigmoid(pre))


@pytest.mark.parametrize("L", [1, 7, 63, 257])
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("variant", ["plain", "full"])
def test_matches_reference(backend, W, L, variant):
    full = variant == "full"   # plain: no bias/activation/states; full: bias, silu, initial and final states
    x, w, b, h = _inputs(2, 6, L, W, bias=full, init=full, seed=W * 1000 + L)
    act = "silu" if full else None
    _check(_run(backend, x, w, b, h, act, full), _run("reference", x, w, b, h, act, full, cast=torch.float64),
           _names(b, h, full))


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("L", [7, 63])
def test_matches_reference_float64(backend, W, L):
    x, w, b, h = _inputs(2, 5, L, W, dtype=torch.float64, seed=L + W)
    _check(_run(backend, x, w, b, h, "swish", True), _run("reference", x, w, b, h, "swish", True), _names(b, h, True))


@pytest.mark.parametrize("bias,init,act", [(True, False, None), (False, True, "silu"), (True, True, None)])
def test_option_combinations(backend, bias, init, act):
    x, w, b, h = _inputs(1, 9, 20, 4, bias=bias, init=init)
    _check(_run(backend, x, w, b, h, act, True), _run("reference", x, w, b, h, act, True, cast=torch.float64),
           _names(b, h, True))


def test_channel_last_input_and_width_one(backend):
    x, w, b, h = _inputs(2, 7, 30, 3, channel_last=True)
    assert x.stride(1) == 1
    _check(_run(backend, x, w, b, h, "silu", True), _run("reference", x, w, b, h, "silu", True, cast=torch.float64),
           _names(b, h, True))
    x, w, b, h = _inputs(2, 3, 10, 1)                              # width 1: no history at all
    _check(_run(backend, x, w, b, h, None, True), _run("reference", x, w, b, h, None, True, cast=torch.float64),
           _names(b, h, True))


def test_bf16_input_fp32_weight(backend):
    x, _, _, h = _inputs(2, 8, 33, 4, dtype=torch.bfloat16)
    _, w, b, _ = _inputs(2, 8, 33, 4, dtype=torch.float32)
    got = _run(backend, x, w, b, h, "silu", True)
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16 and got[3].dtype == torch.float32
    want = _run("reference", x, w, b, h, "silu", True, cast=torch.float64)
    for name, a, e in zip(_names(b, h, True), got, want):
        assert_close(a, e, dtype=torch.bfloat16, name=name)


@pytest.mark.parametrize("with_states", [False, True])
def test_packed_equals_separate(backend, with_states):
    lengths = [5, 1, 0, 12, 3]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    n, L, W = len(lengths), sum(lengths), 4
    x, w, b, h = _inputs(1, 6, L, W, init=with_states, n_states=n)
    packed = _run(backend, x, w, b, h, "silu", True, cu=cu)
    # expected: each sequence on its own (reference, float64), with the same output cotangents
    g = _gen(1)
    gy = torch.randn((1, 6, L), generator=g, dtype=torch.float64)
    gf = torch.randn((n, 6, W - 1), generator=g, dtype=torch.float64)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    hd = h.detach().double().requires_grad_() if h is not None else None
    ys, fins = [], []
    for i in range(n):
        s, e = int(cu[i]), int(cu[i + 1])
        y_i, f_i = causal_conv1d_reference(xd[:, :, s:e], wd, bd, "silu", hd[i:i + 1] if hd is not None else None, True)
        ys.append(y_i)
        fins.append(f_i)
    y, fin = torch.cat(ys, -1), torch.cat(fins, 0)
    leaves = [t for t in (xd, wd, bd, hd) if t is not None]
    want = (y, fin, *torch.autograd.grad((y * gy).sum() + (fin * gf).sum(), leaves))
    _check(packed, want, _names(b, h, True))


# row 0: three sequences from index 0 (one of length 1); row 1: one sequence of index 3 (it ignores its initial
# state: only sequence 0 takes one); row 2: two sequences from index 0
SEQ_IDX = torch.tensor([[0] * 6 + [1] + [2] * 6,
                        [3] * 13,
                        [0] * 2 + [5] * 11])


@pytest.mark.parametrize("channel_last", [False, True])
@pytest.mark.parametrize("with_states", [False, True])
def test_seq_idx_equals_each_sequence_separately(backend, with_states, channel_last):
    """causal_conv1d_fn's seq_idx, any batch size: y, each row's final states and every gradient equal the
    reference run on every sequence by itself (a row's initial state before its sequence 0 only)."""
    B, D, L, W = 3, 6, 13, 4
    x, w, b, h = _inputs(B, D, L, W, init=with_states, channel_last=channel_last)
    out = causal_conv1d(x, w, b, "silu", h, True, backend=backend, seq_idx=SEQ_IDX)
    g = _gen(1)
    gy, gf = (torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out)
    leaves = [t for t in (x, w, b, h) if t is not None]
    got = (*out, *torch.autograd.grad((out[0] * gy.to(x.dtype)).sum() + (out[1] * gf.to(x.dtype)).sum(), leaves))
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    hd = h.detach().double().requires_grad_() if h is not None else None
    rows, fins = [[] for _ in range(B)], [None] * B
    for r, row in enumerate(SEQ_IDX.tolist()):
        cuts = [0] + [t for t in range(1, L) if row[t] != row[t - 1]] + [L]
        for s, e in zip(cuts[:-1], cuts[1:]):
            init = hd[r:r + 1] if hd is not None and s == 0 and row[0] == 0 else None
            y_i, fins[r] = causal_conv1d_reference(xd[r:r + 1, :, s:e], wd, bd, "silu", init, True)
            rows[r].append(y_i)
    y, fin = torch.cat([torch.cat(p, -1) for p in rows], 0), torch.cat(fins, 0)
    lv = [t for t in (xd, wd, bd, hd) if t is not None]
    want = (y, fin, *torch.autograd.grad((y * gy).sum() + (fin * gf).sum(), lv))
    _check(got, want, _names(b, h, True))


def test_seq_idx_constant_is_the_plain_conv_and_boundaries_cut():
    """Tests that can fail: one sequence per row is the plain call; a boundary changes what follows it."""
    x, w, b, h = _inputs(3, 4, 13, 3)
    plain = causal_conv1d(x, w, b, None, h, backend="cpu")
    same = causal_conv1d(x, w, b, None, h, backend="cpu", seq_idx=torch.zeros(3, 13, dtype=torch.int32))
    assert_close(same, plain, dtype=torch.float32, name="y")
    cut = causal_conv1d(x, w, b, None, h, backend="cpu", seq_idx=SEQ_IDX)
    assert_close(cut[0, :, :6], plain[0, :, :6], dtype=torch.float32, name="y before the boundary")
    assert (cut[0, :, 6:8] - plain[0, :, 6:8]).abs().max() > 1e-3


def test_packed_sequences_do_not_leak():
    cu = torch.tensor([0, 4, 9])
    x, w, b, _ = _inputs(1, 3, 9, 4, init=False)
    y1 = causal_conv1d(x, w, b, cu_seqlens=cu, backend="cpu")
    x2 = x.detach().clone()
    x2[..., :4] += 100.0                                          # change only the first document
    y2 = causal_conv1d(x2, w, b, cu_seqlens=cu, backend="cpu")
    assert torch.equal(y1[..., 4:], y2[..., 4:])
    assert not torch.equal(y1[..., :4], y2[..., :4])


@pytest.mark.parametrize("backend_u", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("extra", [0, 1, 3], ids=["S=W-1", "S=W", "S=W+2"])
def test_update_equals_steps(backend_u, W, extra, request):
    if backend_u == "triton":
        request.getfixturevalue("triton_interpreter")
    S = W - 1 + extra
    x, w, b, _ = _inputs(2, 5, 11, W, init=False)
    x, w, b = x.detach(), w.detach(), b.detach()
    state0 = torch.randn(2, 5, S, generator=_gen(3))
    y_full = causal_conv1d(x, w, b, "silu", state0[..., S - (W - 1):].contiguous(), backend="reference")
    state = state0.clone()
    ys = [causal_conv1d_update(x[..., :4], state, w, b, "silu", backend=backend_u)]      # a chunk of 4
    ys += [causal_conv1d_update(x[..., t], state, w, b, "silu", backend=backend_u)[..., None] for t in range(4, 11)]
    assert_close(torch.cat(ys, -1), y_full, name="y")
    assert_close(state, torch.cat([state0, x], -1)[..., 11:], name="conv_state")       # last S inputs


def test_update_matches_final_states_continuation(backend):
    """prefill with causal_conv1d, continue with updates: equals one long causal_conv1d."""
    x, w, b, _ = _inputs(1, 4, 9, 4, init=False)
    x, w, b = x.detach(), w.detach(), b.detach()
    y_all = causal_conv1d(x, w, b, "silu", backend="reference")
    y0, fin = causal_conv1d(x[..., :6], w, b, "silu", return_final_states=True, backend=backend)
    state = fin.clone()                                           # (batch, dim, width-1) state
    y1 = causal_conv1d_update(x[..., 6:], state, w, b, "silu", backend=backend)
    assert_close(torch.cat([y0, y1], -1), y_all)


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_float64(backend, packed):
    cu = torch.tensor([0, 2, 5]) if packed else None
    B, n = (1, 2) if packed else (2, 2)
    x, w, b, h = _inputs(B, 2, 5, 3, dtype=torch.float64, n_states=n, seed=7)

    def fn(x, w, b, h):
        y, f = causal_conv1d(x, w, b, "silu", h, True, cu, backend=backend)
        return y, f

    assert torch.autograd.gradcheck(fn, (x, w, b, h), fast_mode=backend == "triton")


def test_auto_is_cpu_on_cpu_tensors_and_reference_dispatch():
    x, w, b, h = _inputs(1, 3, 8, 3)
    assert_close(causal_conv1d(x, w, b, "silu", h), causal_conv1d(x, w, b, "silu", h, backend="cpu"))
    assert_close(causal_conv1d(x, w, b, "silu", h, backend="reference"), causal_conv1d_reference(x, w, b, "silu", h))


def test_custom_op_registration_and_compile():
    from parazoo.ops.causal_conv1d import _conv_op
    x, w, b, h = _inputs(1, 3, 8, 3)
    torch.library.opcheck(_conv_op, (x, w, b, h, None, "silu", "cpu"))
    torch.library.opcheck(_conv_op, (x, w, None, None, torch.tensor([0, 3, 8]), "", "cpu"))
    f = torch.compile(lambda x, w, b, h: causal_conv1d(x, w, b, "silu", h, True, backend="cpu"), fullgraph=True)
    for a, e in zip(f(x, w, b, h), causal_conv1d_reference(x, w, b, "silu", h, True)):
        assert_close(a, e)


class _FakeUpstream:
    def __init__(self):
        self.calls = []

    def module(self):
        def fn(*args, **kwargs):
            self.calls.append(("fn", args, kwargs))
            return "fn-result"

        def update(*args, **kwargs):
            self.calls.append(("update", args, kwargs))
            return "update-result"

        return types.SimpleNamespace(causal_conv1d_fn=fn, causal_conv1d_update=update)


def test_delegates_to_causal_conv1d_package_on_cuda(monkeypatch, triton_interpreter):
    from parazoo.ops.causal_conv1d import upstream

    fake = _FakeUpstream()
    monkeypatch.setitem(sys.modules, "causal_conv1d", fake.module())
    monkeypatch.setattr(upstream, "on_cuda", lambda x: True)      # pretend the tensors are on CUDA
    x, w, b, _ = _inputs(2, 4, 8, 4, channel_last=True)
    h = torch.zeros(2, 4, 3)
    assert causal_conv1d(x, w, b, "silu", h, True, backend="triton") == "fn-result"
    kind, args, kwargs = fake.calls[-1]
    assert kind == "fn" and kwargs == {} and len(args) == 8
    assert args[0] is x and args[1] is w and args[2] is b and args[3] is None and args[4] is h
    assert args[5] is True and args[6] is None and args[7] == "silu"
    monkeypatch.setenv("PARAZOO_BACKEND", "triton")                # forcing triton globally delegates too
    assert causal_conv1d(x, w, None, None) == "fn-result"

    state = torch.zeros(2, 4, 4)
    assert causal_conv1d_update(x[..., 0], state, w, b, "swish", backend="triton") == "update-result"
    kind, args, kwargs = fake.calls[-1]
    assert kind == "update" and kwargs == {} and len(args) == 5
    assert args[1] is state and args[2] is w and args[3] is b and args[4] == "swish"

    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0] * 8])  # mamba_ssm's packing: passed through as int32
    assert causal_conv1d(x, w, b, "silu", backend="triton", seq_idx=seq_idx) == "fn-result"
    kind, args, kwargs = fake.calls[-1]
    assert args[0] is x and args[3].dtype == torch.int32 and torch.equal(args[3], seq_idx.int())
    assert args[4] is None and args[5] is False and args[7] == "silu"

    # cases upstream does not take stay on parazoo's kernels
    n = len(fake.calls)
    causal_conv1d(x.detach(), w.detach(), b, None, h, backend="triton", seq_idx=seq_idx)  # seq_idx with states
    causal_conv1d(x.detach().contiguous(), w.detach(), backend="triton", seq_idx=seq_idx)  # seq_idx, time-contiguous
    causal_conv1d(x.detach().double(), w.detach().double(), backend="triton")           # float64
    causal_conv1d(x[:1].detach(), w.detach(), cu_seqlens=torch.tensor([0, 3, 8]), backend="triton")  # packed
    causal_conv1d(x.detach().contiguous(), w.detach(), None, None, h, backend="triton")  # states, time-contiguous
    causal_conv1d(x.detach()[:, :, :4], torch.randn(4, 5), backend="triton")           # width 5
    causal_conv1d(x.detach(), w.detach(), backend="cpu")                                # explicit cpu
    assert len(fake.calls) == n


@pytest.mark.parametrize("call,match", [
    (lambda: causal_conv1d(torch.ones(2, 3), torch.ones(3, 4)), r"'x'.*\(batch, dim, L\).*\(2, 3\)"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5, dtype=torch.int64), torch.ones(3, 4)), "'x'.*floating.*int64"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(2, 4)), r"'weight'.*dim.*\(2, 4\)"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 0)), "'weight'.*width >= 1"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), torch.ones(4)), r"'bias'.*\(4,\)"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), activation="relu"), "'activation'.*'relu'"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), initial_states=torch.ones(1, 3, 4)),
     r"'initial_states'.*\(1, 3, 3\).*\(1, 3, 4\)"),
    (lambda: causal_conv1d(torch.ones(2, 3, 5), torch.ones(3, 4), cu_seqlens=torch.tensor([0, 5])), "batch size 1, got 2"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), cu_seqlens=torch.tensor([0, 4])), "'cu_seqlens'.*end at.*5"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), cu_seqlens=torch.tensor([0.0, 5.0])), "'cu_seqlens'.*int"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), initial_states=torch.ones(1, 3, 3),
                           cu_seqlens=torch.tensor([0, 2, 5])), r"'initial_states'.*\(2, 3, 3\)"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), return_final_states=1), "'return_final_states'"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), backend="gpu"), "backend must be one of"),
    (lambda: causal_conv1d(torch.ones(2, 3, 5), torch.ones(3, 4), seq_idx=torch.zeros(2, 4, dtype=torch.int32)),
     r"'seq_idx'.*\(2, 5\)"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), seq_idx=torch.tensor([[0, 1, 1, 0, 0]])),
     "'seq_idx'.*non-decreasing"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), seq_idx=torch.zeros(1, 5)), "'seq_idx'.*integer"),
    (lambda: causal_conv1d(torch.ones(1, 3, 5), torch.ones(3, 4), seq_idx=torch.zeros(1, 5, dtype=torch.int32),
                           cu_seqlens=torch.tensor([0, 5])), "'seq_idx' or as 'cu_seqlens'"),
    (lambda: causal_conv1d(torch.ones(2, 3, 5), torch.ones(3, 4), initial_states=torch.ones(1, 3, 3),
                           seq_idx=torch.zeros(2, 5, dtype=torch.int32)), r"'initial_states'.*\(2, 3, 3\)"),
    (lambda: causal_conv1d_update(torch.ones(2, 3), torch.ones(2, 3, 2), torch.ones(3, 4)),
     r"'conv_state'.*S >= width-1 = 3.*\(2, 3, 2\)"),
    (lambda: causal_conv1d_update(torch.ones(2, 3), torch.ones(1, 3, 4), torch.ones(3, 4)), r"'conv_state'.*batch"),
    (lambda: causal_conv1d_update(torch.ones(3), torch.ones(1, 3, 4), torch.ones(3, 4)), "'x'.*2 or 3 dimensions"),
    (lambda: causal_conv1d_update(torch.ones(1, 3), torch.ones(1, 3, 4), torch.ones(3, 4), activation="gelu"),
     "'activation'"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
