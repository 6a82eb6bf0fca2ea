"""selective_scan / selective_state_update: reference vs cpu (C kernel and pure-torch fallback) vs
triton (interpreter), forward and every gradient (including through last_state), odd lengths,
T = 1, grouped B/C, D / z / delta_bias / softplus on and off, cu_seqlens and seq_idx packing, decode steps,
float64 gradcheck, bf16 input, non-contiguous input, custom-op registration, bad input, the
channel-blocked C kernels (float32, N <= 256 padded to a multiple of 16, 16 channels per group,
channels padded per group), initial_state (continuation), random shapes (padded channels among them)."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from parazoo.ops import selective_scan, selective_state_update, ssd_scan
from parazoo.ops.selective_scan import cpu, cpu_block_kernel, cpu_kernel, cpu_update, selective_scan_reference
from parazoo.ops.testing import assert_close, use_cpu_path

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _use_path(name, request, monkeypatch):
    """cpu = fused C kernel; cpu_torch = the pure-torch path taken when no compiler is available."""
    if name == "triton":
        request.getfixturevalue("triton_interpreter")
        return "triton"
    use_cpu_path("torch" if name == "cpu_torch" else "c", monkeypatch, cpu_kernel.LIB, cpu_block_kernel.BLK_LIB,
                 cpu_update.KERNEL)
    return "cpu"


@pytest.fixture(params=["cpu", "cpu_torch", "triton"])
def backend(request, monkeypatch):
    return _use_path(request.param, request, monkeypatch)


@pytest.fixture(params=["cpu", "cpu_torch"])
def cpu_backend(request, monkeypatch):
    return _use_path(request.param, request, monkeypatch)


def _inputs(b, d, L, N, G=None, GC="same", D=True, z=True, bias=True, dtype=torch.float64, seed=0, softplus=True,
            h0=False):
    """Random inputs in Mamba's ranges (A < 0, steps that are positive after softplus, or already
    positive without it), with an initial state when h0; float64 values cast to dtype."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    GC = G if GC == "same" else GC
    t = dict(
        u=r(b, d, L),
        delta=r(b, d, L, scale=0.5, shift=-1.0) if softplus else torch.rand(b, d, L, generator=g, dtype=torch.float64).to(dtype),
        A=-torch.exp(r(d, N, scale=0.5)).to(dtype),
        B=r(b, N, L) if G is None else r(b, G, N, L),
        C=r(b, N, L) if GC is None else r(b, GC, N, L),
        D=r(d) if D else None, z=r(b, d, L) if z else None,
        delta_bias=(r(d, scale=0.3) if softplus else 0.1 * torch.rand(d, generator=g, dtype=torch.float64).to(dtype)) if bias else None,
    )
    if h0:
        t["initial_state"] = r(b, d, N)
    return {k: (v.requires_grad_() if v is not None else None) for k, v in t.items()}


def _run(inputs, backend, softplus, cu_seqlens=None, cast=None, seed=1):
    """y, last_state and the gradients of <y, gy> + <last, gl> for random gy, gl."""
    if cast is not None:  # float64 copies of the same values, as fresh leaves
        inputs = {k: (v.detach().to(cast).requires_grad_() if v is not None else None) for k, v in inputs.items()}
    y, last = selective_scan(**inputs, delta_softplus=softplus, return_last_state=True, cu_seqlens=cu_seqlens,
                             backend=backend)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    gl = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    leaves = [v for v in inputs.values() if v is not None]
    grads = torch.autograd.grad((y * gy).sum() + (last * gl).sum(), leaves)
    names = [k for k, v in inputs.items() if v is not None]
    return y, last, dict(zip(names, grads))


def _compare(actual, expected, dtype, may_vanish=()):
    """may_vanish: gradients that are exactly zero by the equations (dA at T = 1: h_{-1} = 0)."""
    y, last, grads = actual
    ey, elast, egrads = expected
    assert_close(y, ey, dtype=dtype, name="y")
    assert_close(last, elast, dtype=dtype, name="last_state")
    assert grads.keys() == egrads.keys()
    for k in grads:
        assert k in may_vanish or egrads[k].abs().max() > 0, f"gradient of {k} is identically zero: the check could not fail"
        assert_close(grads[k], egrads[k], dtype=dtype, name=f"d{k}")


# Small shapes: the Triton interpreter costs about a millisecond per scanned element, so every
# case keeps batch * dim * N * L small; bigger shapes run on the CPU paths below and in the slow tier.
CASES = {  # (b, d, L, N, G, GC, D, z, bias, softplus)
    "T1_all_options": (2, 4, 1, 4, None, None, True, True, True, True),
    "T7_plain_N16": (1, 3, 7, 16, None, None, False, False, False, False),
    "T63_grouped_D_bias": (1, 4, 63, 4, 2, 2, True, False, True, True),
    "T257_groups_B_C_differ_z": (1, 2, 257, 2, 2, None, True, True, False, True),
    "T65_oddN_no_softplus": (1, 2, 65, 3, 2, None, True, True, True, False),
}
BIG_CASES = {
    "T63_N16_grouped": (3, 4, 63, 16, 2, 2, True, False, True, True),
    # float32 runs the channel-blocked C kernels here (16 channels of one group per vector)
    "T70_N16_blocked_groups_differ": (2, 32, 70, 16, 2, 1, True, True, True, True),
    "T5_N16_blocked_plain": (1, 16, 5, 16, None, None, False, False, False, False),
    # L a multiple of 16 over several chunks: the backward streams du, ddelta, dz out (non-temporal stores)
    "T192_N16_blocked_streamed": (2, 32, 192, 16, 1, 1, True, True, True, True),
    # N not a multiple of 16: the blocked kernels run on the state padded to 16 (A = 0, B = C = 0 there)
    "T150_N3_blocked_padded": (2, 32, 150, 3, 2, 1, True, True, True, True),
    # N = 32: two 16-entry groups per transpose, four 8-entry parts in the reverse pass
    "T70_N32_blocked": (1, 16, 70, 32, None, None, True, True, True, True),
    # N = 64: checkpoints every 32 steps (cpu_kernel.chunk_for), four chunks, the last one short
    "T100_N64_blocked_chunk32": (1, 16, 100, 64, None, None, True, True, True, True),
    # N = 250: padded to MAX_NS = 256, eight slabs of 32 in the backward
    "T20_N250_blocked_max_state": (1, 16, 20, 250, None, None, True, True, True, True),
    # channels not a multiple of 16 per group: the blocked kernels run on channels zero-padded per group
    "T70_N16_channels_padded": (2, 56, 70, 16, 2, 1, True, True, True, True),
    # B groups 2, C groups 3: 6 runs of 14 channels, each padded to 16 (and N 5 padded to 16)
    "T130_N5_channels_padded_groups_differ": (2, 84, 130, 5, 2, 3, True, True, True, True),
    "T257_N16_groups_differ": pytest.param((2, 6, 257, 16, 3, 1, True, True, False, True), marks=pytest.mark.slow),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_grads_match_reference(backend, dtype, case):
    _check_case(backend, dtype, CASES[case])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(BIG_CASES.values()), ids=list(BIG_CASES))
def test_bigger_shapes_match_reference(cpu_backend, dtype, case):
    _check_case(cpu_backend, dtype, case)


@pytest.mark.parametrize("threads,N,d", [(1, 16, 160), (2, 16, 160), (3, 16, 160), (2, 40, 160), (3, 16, 150)])
def test_blocked_backward_many_blocks(threads, N, d):
    """The blocked backward takes each thread's blocks four at a time and shares the lane-wise dB/dC
    buffers between them: 20 blocks (10 per batch row) split over 1-3 threads, so block groups are
    uneven, straddle a B group boundary (80 channels per group) and several chunks (L = 130).
    N = 40 runs padded to 48 (three 16-entry groups, six reverse-pass parts); d = 150: two B groups of
    75 channels, each padded to 80 (the same 20 blocks)."""
    if cpu_block_kernel.BLK_LIB.load() is None:
        pytest.skip("the channel-blocked kernels do not compile here")
    case = (2, d, 130, N, 2, 1, True, True, True, True)
    assert _uses_blocked_kernel(case, torch.float32)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_case("cpu", torch.float32, case)
    finally:
        torch.set_num_threads(old)


@pytest.mark.slow
def test_bigger_shapes_triton(triton_interpreter):
    _check_case("triton", torch.float32, BIG_CASES["T63_N16_grouped"])


def _check_case(backend, dtype, case, h0=False):
    b, d, L, N, G, GC, D, z, bias, sp = case
    inputs = _inputs(b, d, L, N, G, GC, D, z, bias, dtype=dtype, softplus=sp, h0=h0)
    expected = _run(inputs, "reference", sp, cast=torch.float64)
    _compare(_run(inputs, backend, sp), expected, dtype, may_vanish=("A",) if L == 1 and not h0 else ())


def _uses_blocked_kernel(case, dtype):
    b, d, L, N, G, GC = case[:6]
    u, A = torch.empty(b, d, L, dtype=dtype), torch.empty(d, N, dtype=dtype)
    return cpu._blocked(u, A, torch.empty(b, G or 1, N, L), torch.empty(b, GC or 1, N, L), dtype) is not None


def test_blocked_cases_run_the_blocked_kernel(monkeypatch):
    """The cases above that should exercise the channel-blocked kernels really do (a silent
    fallback to the row kernels would leave them untested); USE_BLOCKED = False (the bench's
    cpu-rows backend) turns them off."""
    if cpu_block_kernel.BLK_LIB.load() is None:
        pytest.skip("the channel-blocked kernels do not compile here (gcc < 12?)")
    for name in ("T70_N16_blocked_groups_differ", "T5_N16_blocked_plain", "T192_N16_blocked_streamed",
                 "T150_N3_blocked_padded", "T70_N32_blocked", "T20_N250_blocked_max_state",
                 "T70_N16_channels_padded", "T130_N5_channels_padded_groups_differ"):
        assert _uses_blocked_kernel(BIG_CASES[name], torch.float32), name
        assert not _uses_blocked_kernel(BIG_CASES[name], torch.float64), name
    assert not _uses_blocked_kernel(BIG_CASES["T63_N16_grouped"], torch.float32)   # 2 channels per group: too few
    # beyond MAX_NS the row kernels run
    assert _uses_blocked_kernel((1, 16, 5, cpu_block_kernel.MAX_NS, None, None), torch.float32)
    assert not _uses_blocked_kernel((1, 16, 5, cpu_block_kernel.MAX_NS + 1, None, None), torch.float32)
    monkeypatch.setattr(cpu, "USE_BLOCKED", False)
    assert not _uses_blocked_kernel(BIG_CASES["T5_N16_blocked_plain"], torch.float32)


def test_channel_plan():
    """Channels split into lcm(GB, GC) runs, each inside one B and one C group, each padded to a multiple
    of 16; no plan when the runs are whole blocks, row kernels when padding would multiply the work by over 1.4."""
    assert cpu.channel_plan(1536, 1, 1) is None
    assert cpu.channel_plan(64, 2, 4) is None                       # runs of 16
    assert cpu.channel_plan(200, 1, 1) == (1, 200, 208)
    assert cpu.channel_plan(84, 2, 3) == (6, 14, 16)
    assert cpu.channel_plan(24, 1, 1) == (1, 24, 32)                 # 1.33x the work
    assert cpu.channel_plan(22, 1, 1) is False                      # 1.45x
    assert cpu.channel_plan(20, 1, 1) is False                      # 1.6x
    assert cpu.channel_plan(8, 1, 1) is False                       # 2x
    x = torch.arange(84.).view(1, 84, 1)
    p = cpu._pad_ch(x, (6, 14, 16), 1)
    assert p.shape == (1, 96, 1) and p.view(6, 16)[:, 14:].eq(0).all()
    assert p.view(6, 16)[:, :14].flatten().equal(torch.arange(84.))
    assert cpu._unpad_ch(p, (6, 14, 16), 1).equal(x)


def _random_cases(n, seed=0):
    """n random (case, h0, threads): channel runs of 1-48 in lcm(GB, GC) groups (so padded, unpadded and
    row-kernel shapes all occur), N 1-64, L 1-257, every option on or off."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        GB = rng.choice([1, 1, 2, 3, 4])
        GC = rng.choice([1, GB, 2])
        d = math.lcm(GB, GC) * rng.choice([1, 3, 12, 14, 15, 16, 17, 30, 31, 32, 45, 48])
        case = (rng.choice([1, 2, 3]), d, rng.choice([1, 2, 7, 63, 64, 65, 130, 257]),
                rng.choice([1, 2, 3, 5, 8, 16, 17, 24, 33, 64]), GB, GC,
                *(rng.random() < p for p in (0.7, 0.7, 0.7, 0.8)))           # D, z, delta_bias, softplus
        out.append((case, rng.random() < 0.3, rng.choice([1, 2, 3])))
    return out


@pytest.mark.parametrize("case,h0,threads", _random_cases(40), ids=[f"r{i}" for i in range(40)])
def test_random_shapes_match_reference(case, h0, threads):
    """The float32 CPU path (blocked kernels as they are or on padded channels / states, or the row
    kernels) against the float64 reference on random shapes and options, on 1-3 threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_case("cpu", torch.float32, case, h0=h0)
    finally:
        torch.set_num_threads(old)


def _blocked_exp(x, base2):
    lib = cpu_block_kernel.BLK_LIB.load()
    if lib is None:
        pytest.skip("the channel-blocked kernels do not compile here")
    from parazoo.ops._cpu_jit import ptr
    y = torch.empty_like(x)
    lib.ss_exp_blk_f32(ptr(x), ptr(y), x.numel(), int(base2))
    return y


def _assert_within_2_ulp(y, ref):
    """float32 y against a float64 reference, in units of the float32 spacing at the reference. (Not against
    torch's float32 exp: on this VM it has returned values 1e-4 off in one thread's half of a tensor, in about
    one fresh process in ten, seen 2026-11-22.)"""
    r32 = ref.float()
    ulp = (torch.nextafter(r32, torch.full_like(r32, float("inf"))) - r32).double()
    assert ((y.double() - ref).abs() / ulp).max() <= 2.0


def test_blocked_kernel_exp_is_within_2_ulp():
    """The blocked kernels' float32 exp (Cody-Waite + degree-6 polynomial + 2^k), used by their pointwise parts,
    against float64 exp on a dense grid of [-87, 0], plus its limits."""
    x = torch.cat([torch.linspace(-87.0, 0.0, 2_000_003), torch.tensor([-1e-30, 1e-3, 5.0, 88.0, 89.0, -104.0, -1e4,
                                                                           -float("inf"), float("inf")])])
    y, ref = _blocked_exp(x, False), torch.exp(x.double())
    _assert_within_2_ulp(y[:-9], ref[:-9])
    assert_close(y[-9:-5].double(), ref[-9:-5], rtol=3e-7, atol=0, name="exp near 0 and up to 88")
    # beyond the range: huge (inf with AVX-512's vscalefps, exp(88) in the portable clamp) or tiny, never NaN
    assert y[-5] >= 1.6e38 and y[-1] >= 1.6e38 and torch.all(y[-4:-1] <= 1.7e-38) and not y.isnan().any()


def test_blocked_kernel_exp2_is_within_2_ulp():
    """The decays' 2^y (exact round, the polynomial in y - round(y), 2^k) against float64 exp2 on a dense grid
    of [-126, 0] (dl * A log2 e), plus its limits: 0 far below, never NaN for finite y."""
    x = torch.cat([torch.linspace(-126.0, 0.0, 2_000_003), torch.tensor([-0.5, 0.5, -1e-30, 3.7, -150.0, -1e4,
                                                                            -3e38])])
    y, ref = _blocked_exp(x, True), torch.exp2(x.double())
    _assert_within_2_ulp(y[:-7], ref[:-7])
    assert_close(y[-7:-3].double(), ref[-7:-3], rtol=3e-7, atol=0, name="exp2 at the reduction's edges and above 0")
    assert torch.all(y[-3:] <= 1.2e-38) and not y.isnan().any()


def test_blocked_kernels_extreme_decays_match_reference():
    """A = -inf or -1e30 (the kernels bound A log2 e at -1e20 so that their 2^y never sees -inf), A = 0, and
    dl from 6e-16 to 1e6: the float32 forward equals the float64 reference, with no NaN."""
    g = torch.Generator().manual_seed(0)
    dim, N, L = 16, 16, 9
    A = -torch.rand(dim, N, generator=g, dtype=torch.float64) * 3
    A[0, :4] = -float("inf")
    A[1, :4] = -1e30
    A[2, :4] = 0.0
    delta = torch.randn(1, dim, L, generator=g, dtype=torch.float64)
    delta[0, :, 3:6] = torch.tensor([-35.0, 1e6, 30.0])                           # dl 6e-16, 1e6, 30 at t = 3, 4, 5
    u, B, C = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((1, dim, L), (1, N, L), (1, N, L)))
    want = selective_scan(u, delta, A, B, C, delta_softplus=True, backend="reference")
    got = selective_scan(*(t.float() for t in (u, delta, A, B, C)), delta_softplus=True, backend="cpu")
    assert not got.isnan().any()
    assert_close(got, want, dtype=torch.float32, name="y")


H0_CASES = {  # initial_state; T37: more than one 16-step tile in the interpreter
    "T37_h0": (2, 2, 37, 4, None, None, True, True, True, True),
    "T1_h0_no_softplus": (1, 2, 1, 3, 2, None, True, False, True, False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(H0_CASES))
def test_initial_state_matches_reference(backend, dtype, case):
    """Forward, last state and every gradient, d initial_state included."""
    _check_case(backend, dtype, H0_CASES[case], h0=True)


@pytest.mark.parametrize("d,N", [(32, 16), (32, 7), (28, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_initial_state_blocked_kernel(cpu_backend, dtype, d, N):
    """N = 7: the initial state and d initial_state go through the padded state; d = 28 (two B groups of 14
    channels) through the padded channels too."""
    _check_case(cpu_backend, dtype, (2, d, 40, N, 2, None, True, True, True, True), h0=True)


def test_initial_state_continues_a_split_scan(backend):
    """Scanning [0, s) then [s, L) from the first part's last state equals one scan of [0, L):
    outputs, final state and gradients (through the carried state too)."""
    b, d, L, N, s = 1, 2, 21, 3, 8
    inputs = _inputs(b, d, L, N, G=2, dtype=torch.float64, seed=5)
    leaves = [v for v in inputs.values() if v is not None]
    g = torch.Generator().manual_seed(2)
    gy, gl = torch.randn(b, d, L, generator=g, dtype=torch.float64), torch.randn(b, d, N, generator=g, dtype=torch.float64)
    y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=backend)
    full = torch.autograd.grad((y * gy).sum() + (last * gl).sum(), leaves)

    def part(a, e):
        return {k: (v[..., a:e] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}

    y1, h1 = selective_scan(**part(0, s), delta_softplus=True, return_last_state=True, backend=backend)
    y2, h2 = selective_scan(**part(s, L), delta_softplus=True, return_last_state=True, backend=backend, initial_state=h1)
    assert_close(torch.cat([y1, y2], -1), y, name="y split vs whole")
    assert_close(h2, last, name="last state split vs whole")
    split = torch.autograd.grad((y1 * gy[..., :s]).sum() + (y2 * gy[..., s:]).sum() + (h2 * gl).sum(), leaves)
    for k, a, e in zip([k for k, v in inputs.items() if v is not None], split, full):
        assert_close(a, e, name=f"d{k} split vs whole")


def test_initial_state_empty_sequence_returns_it(backend):
    inputs = _inputs(1, 2, 0, 3, dtype=torch.float64, h0=True)
    y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=backend)
    assert y.shape == (1, 2, 0)
    assert_close(last, inputs["initial_state"].detach(), name="last state of an empty scan")


def test_reference_matches_hand_computation():
    # one channel, N = 1: h_t = exp(dl A) h_{t-1} + dl B_t u_t, y = C h + D u
    u = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[3.0, -1.0]]], dtype=torch.float64)
    C = torch.tensor([[[0.5, 2.0]]], dtype=torch.float64)
    D = torch.tensor([0.1], dtype=torch.float64)
    h0 = 0.5 * 3.0 * 1.0
    h1 = math.exp(-0.5) * h0 + 0.25 * -1.0 * 2.0
    y, last = selective_scan_reference(u, delta, A, B, C, D, return_last_state=True)
    assert_close(y, torch.tensor([[[0.5 * h0 + 0.1, 2.0 * h1 + 0.2]]], dtype=torch.float64))
    assert_close(last, torch.tensor([[[h1]]], dtype=torch.float64))
    z = torch.tensor([[[0.3, -0.7]]], dtype=torch.float64)
    assert_close(selective_scan_reference(u, delta, A, B, C, D, z=z), y * F.silu(z))
    bias = torch.tensor([0.2], dtype=torch.float64)
    assert_close(selective_scan_reference(u, delta, A, B, C, delta_bias=bias, delta_softplus=True),
                 selective_scan_reference(u, F.softplus(delta + 0.2), A, B, C))


def test_last_state_dtype_and_shapes(backend):
    inputs = _inputs(2, 4, 9, 3, dtype=torch.float32)
    y, last = selective_scan(**inputs, return_last_state=True, backend=backend)
    assert y.shape == (2, 4, 9) and y.dtype == torch.float32
    assert last.shape == (2, 4, 3) and last.dtype == torch.float32
    assert isinstance(selective_scan(**inputs, backend=backend), torch.Tensor)


def test_cu_seqlens_packed_equals_separate(backend):
    """Packed documents never leak into each other: forward, last states and gradients equal
    running each sequence on its own (including an empty sequence, whose last state is zero)."""
    lens = [5, 0, 20, 1, 13]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    L = int(cu[-1])
    inputs = _inputs(1, 2, L, 3, G=2, dtype=torch.float64)
    y, last, grads = _run(inputs, backend, True, cu_seqlens=cu)
    assert last.shape == (len(lens), 2, 3)
    assert_close(last[1], torch.zeros_like(last[1]), name="empty sequence's state")
    # the same through the reference
    _compare((y, last, grads), _run(inputs, "reference", True, cu_seqlens=cu), torch.float64)
    # separately: slice every time-major tensor, run alone, accumulate the gradients of shared inputs
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gl = torch.randn(last.shape, generator=g, dtype=torch.float64)
    y_packed, last_packed = selective_scan(**inputs, delta_softplus=True, return_last_state=True, cu_seqlens=cu,
                                           backend=backend)
    leaves = [v for v in inputs.values() if v is not None]
    packed_grads = torch.autograd.grad((y_packed * gy).sum() + (last_packed * gl).sum(), leaves)
    sep_loss = 0
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if e == s:
            continue
        part = {k: (v[..., s:e] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
        yi, li = selective_scan(**part, delta_softplus=True, return_last_state=True, backend=backend)
        assert_close(y_packed[..., s:e], yi, name=f"y of sequence {i}")
        assert_close(last_packed[i], li[0], name=f"last state of sequence {i}")
        sep_loss = sep_loss + (yi * gy[..., s:e]).sum() + (li[0] * gl[i]).sum()
    sep_grads = torch.autograd.grad(sep_loss, leaves)
    for k, a, e in zip([k for k, v in inputs.items() if v is not None], packed_grads, sep_grads):
        assert_close(a, e, name=f"d{k} packed vs separate")


def _with_seq_states(inputs, n_seqs, seed=7):
    """inputs plus one random initial state per packed sequence, (n_seqs, dim, N), a leaf."""
    g = torch.Generator().manual_seed(seed)
    d, N = inputs["A"].shape
    h0 = torch.randn(n_seqs, d, N, generator=g, dtype=torch.float64).to(inputs["u"].dtype)
    return {**inputs, "initial_state": h0.requires_grad_()}


def test_cu_seqlens_initial_states_equal_each_sequence_from_its_state(backend):
    """One initial state per packed sequence: y, the last states and every gradient (d initial_state too)
    equal each sequence run alone from its own state; an empty sequence's last state is its initial state,
    whose gradient is then the last state's."""
    lens = [5, 0, 20, 1, 13]                     # 20: a start inside the interpreter's 16-step tiles
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    inputs = _with_seq_states(_inputs(1, 2, int(cu[-1]), 3, G=2, dtype=torch.float64), len(lens))
    y, last, grads = _run(inputs, backend, True, cu_seqlens=cu)
    assert last.shape == (len(lens), 2, 3)
    assert_close(last[1], inputs["initial_state"][1].detach(), name="empty sequence's last state")
    _compare((y, last, grads), _run(inputs, "reference", True, cu_seqlens=cu), torch.float64)
    g = torch.Generator().manual_seed(1)                                      # _run's output weights
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gl = torch.randn(last.shape, generator=g, dtype=torch.float64)
    names = [k for k, v in inputs.items() if v is not None]
    leaves = [inputs[k] for k in names]
    sep_loss = 0
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if e == s:
            sep_loss = sep_loss + (inputs["initial_state"][i] * gl[i]).sum()
            continue
        part = {k: (v[..., s:e] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
        part["initial_state"] = inputs["initial_state"][i:i + 1]
        yi, li = selective_scan(**part, delta_softplus=True, return_last_state=True, backend="reference")
        assert_close(y[..., s:e], yi, name=f"y of sequence {i}")
        assert_close(last[i], li[0], name=f"last state of sequence {i}")
        sep_loss = sep_loss + (yi * gy[..., s:e]).sum() + (li[0] * gl[i]).sum()
    for k, e in zip(names, torch.autograd.grad(sep_loss, leaves)):
        assert_close(grads[k], e, name=f"d{k} packed vs separate")


@pytest.mark.parametrize("h0", [False, True])
@pytest.mark.parametrize("d,N", [(16, 16), (16, 9), (13, 9), (16, 32), (16, 250)])
def test_cu_seqlens_blocked_kernel(cpu_backend, d, N, h0):
    """Packed sequences on the channel-blocked kernels (float32, 16 channels), forward and gradients; N = 9
    runs padded to 16 (the per-sequence last states and their gradients too), d = 13 padded to 16, N = 32 and
    250 in slabs of 32 state entries; with h0, from one initial state per sequence (starts in the middle of
    the 64-step chunks, at a chunk's first step (64) and on consecutive steps)."""
    cu = torch.tensor([0, 5, 5, 64, 75, 76, 90], dtype=torch.int32)
    inputs = _inputs(1, d, 90, N, G=1, dtype=torch.float32)
    if h0:
        inputs = _with_seq_states(inputs, cu.numel() - 1)
    _compare(_run(inputs, cpu_backend, True, cu_seqlens=cu), _run(inputs, "reference", True, cu_seqlens=cu, cast=torch.float64),
             torch.float32)


# row 0: three sequences from index 0 (one of length 1); row 1: one sequence of index 3 (no initial state);
# row 2: two sequences; row 3: one sequence of index 0 (its last state continues its initial state)
SEQ_IDX = torch.tensor([[0] * 6 + [1] + [2] * 6,
                        [3] * 13,
                        [0] * 2 + [5] * 11,
                        [0] * 13])


@pytest.mark.parametrize("h0", [False, True])
@pytest.mark.parametrize("G", [None, 2])
def test_seq_idx_equals_each_sequence_separately(backend, G, h0):
    """mamba_ssm's seq_idx (the Mamba-2 packing convention) at batch 4: y, each row's last state (its last
    sequence's) and every gradient equal the reference run on every sequence by itself; initial_state[r]
    before row r's sequence 0 only."""
    B_, d, L, N = 4, 4, 13, 3
    inputs = _inputs(B_, d, L, N, G=G, dtype=torch.float64, h0=h0)
    y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, seq_idx=SEQ_IDX, backend=backend)
    assert y.shape == (B_, d, L) and y.is_contiguous() and last.shape == (B_, d, N)
    g = torch.Generator().manual_seed(1)
    gy, gl = (torch.randn(o.shape, generator=g, dtype=torch.float64) for o in (y, last))
    names = [k for k, v in inputs.items() if v is not None]
    leaves = [inputs[k] for k in names]
    got = torch.autograd.grad((y * gy).sum() + (last * gl).sum(), leaves)
    sep_loss = 0
    for r, row in enumerate(SEQ_IDX.tolist()):
        cuts = [0] + [t for t in range(1, L) if row[t] != row[t - 1]] + [L]
        for s, e in zip(cuts[:-1], cuts[1:]):
            part = {k: (v[r:r + 1, ..., s:e] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
            if h0:
                part["initial_state"] = inputs["initial_state"][r:r + 1] if s == 0 and row[0] == 0 else None
            yi, li = selective_scan(**part, delta_softplus=True, return_last_state=True, backend="reference")
            assert_close(y[r:r + 1, :, s:e], yi, name=f"y of row {r}, tokens {s}..{e}")
            sep_loss = sep_loss + (yi * gy[r:r + 1, :, s:e]).sum()
        assert_close(last[r], li[0], name=f"last state of row {r} (its last sequence's)")
        sep_loss = sep_loss + (li[0] * gl[r]).sum()
    for k, a, e in zip(names, got, torch.autograd.grad(sep_loss, leaves)):
        assert_close(a, e, name=f"d{k} seq_idx vs separate")


def test_seq_idx_blocked_kernel_and_constant_index(cpu_backend):
    """float32 at 16 channels (the channel-blocked kernels) against the float64 reference; one index per row is
    the plain call, and a boundary changes what follows it."""
    inputs = _inputs(4, 16, 13, 16, dtype=torch.float32)
    plain = selective_scan(**inputs, delta_softplus=True, backend=cpu_backend)
    same = selective_scan(**inputs, delta_softplus=True, backend=cpu_backend, seq_idx=torch.full((4, 13), 4))
    assert_close(same, plain, dtype=torch.float32, name="y, one sequence per row")
    cut = selective_scan(**inputs, delta_softplus=True, backend=cpu_backend, seq_idx=SEQ_IDX)
    ref = selective_scan(**{k: v.detach().double() if v is not None else None for k, v in inputs.items()},
                         delta_softplus=True, backend="reference", seq_idx=SEQ_IDX)
    assert_close(cut, ref, dtype=torch.float32, name="y with seq_idx")
    assert_close(cut[0, :, :6], plain[0, :, :6], dtype=torch.float32, name="y before the first boundary")
    assert (cut[0, :, 6:8] - plain[0, :, 6:8]).abs().max() > 1e-3


@pytest.mark.parametrize("bad,match", [
    (dict(seq_idx=torch.zeros(2, 8, dtype=torch.int32)), r"'seq_idx'.*\(2, 9\)"),
    (dict(seq_idx=torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0, 0]] * 2)), "'seq_idx'.*non-decreasing"),
    (dict(seq_idx=torch.zeros(2, 9)), "'seq_idx'.*integer"),
    (dict(seq_idx=torch.full((2, 9), -1)), "'seq_idx'.*>= 0"),
    (dict(seq_idx=torch.zeros(2, 9, dtype=torch.int64), initial_state=torch.zeros(2, 4, 4)), "'initial_state'"),
])
def test_bad_seq_idx_raises_value_error(bad, match):
    args = dict(u=torch.randn(2, 4, 9), delta=torch.rand(2, 4, 9), A=-torch.rand(4, 3), B=torch.randn(2, 3, 9),
                C=torch.randn(2, 3, 9))
    with pytest.raises(ValueError, match=match):
        selective_scan(**args, **bad)
    one = {k: v[:1] if k != "A" else v for k, v in args.items()}
    with pytest.raises(ValueError, match="'seq_idx' or as 'cu_seqlens'"):
        selective_scan(**one, seq_idx=torch.zeros(1, 9, dtype=torch.int64), cu_seqlens=torch.tensor([0, 9]))


@pytest.mark.parametrize("which", ["y", "last"])
def test_gradients_through_one_output_only(backend, which):
    """A loss on y alone (no dlast is materialised) or on the last state alone (dy is None in the
    backward): gradients equal the reference's."""
    inputs = _inputs(2, 4, 19, 3, G=2, dtype=torch.float64)
    leaves = [v for v in inputs.values() if v is not None]
    grads = {}
    for bk in (backend, "reference"):
        y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=bk)
        out = y if which == "y" else last
        grads[bk] = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(),
                                        leaves, allow_unused=True)
    for name, a, e, x in zip([k for k, v in inputs.items() if v is not None], grads[backend], grads["reference"], leaves):
        zero = torch.zeros_like(x)                   # D and z do not reach the last state: unused (None) or zeros
        assert_close(zero if a is None else a, zero if e is None else e, name=f"d{name}")


@pytest.mark.parametrize("d", [32, 30])
@pytest.mark.parametrize("layout", ["channel_last", "expanded", "strided_L"])
def test_backward_reads_a_strided_output_gradient(cpu_backend, layout, d):
    """dy arrives as the model makes it: channel-last (the gradient of y.transpose(1, 2) before an
    output projection), an expanded scalar (y.sum()) or strided in time; the blocked kernels read
    it in place (d = 30: padded to 32 channels first). Gradients equal those of the same dy made contiguous."""
    b, L, N = 2, 70, 16
    inputs = _inputs(b, d, L, N, G=1, dtype=torch.float32)
    leaves = [v for v in inputs.values() if v is not None]
    g = torch.Generator().manual_seed(4)
    dense = torch.randn(b, d, 2 * L, generator=g)
    dy = {"channel_last": dense[..., :L].transpose(1, 2).contiguous().transpose(1, 2),
          "expanded": torch.full((1, 1, 1), 0.7).expand(b, d, L),
          "strided_L": dense[..., ::2]}[layout]
    assert not dy.is_contiguous()
    y = selective_scan(**inputs, delta_softplus=True, backend=cpu_backend)
    got = torch.autograd.grad(y, leaves, dy)
    y = selective_scan(**inputs, delta_softplus=True, backend=cpu_backend)
    want = torch.autograd.grad(y, leaves, dy.contiguous())
    for name, a, e in zip([k for k, v in inputs.items() if v is not None], got, want):
        assert_close(a, e, rtol=1e-6, atol=1e-6, name=f"d{name}")


@pytest.mark.parametrize("grouped", [False, True])
def test_state_update_is_one_scan_step_and_iterates_to_the_scan(backend, grouped):
    b, d, L, N = 2, 4, 6, 3
    inputs = _inputs(b, d, L, N, G=2 if grouped else None, dtype=torch.float32)
    inputs = {k: (v.detach() if v is not None else None) for k, v in inputs.items()}
    y_scan, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend="reference")
    state = torch.zeros(b, d, N)
    for t in range(L):
        y_t = selective_state_update(state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"],
                                     inputs["B"][..., t], inputs["C"][..., t], inputs["D"], inputs["z"][..., t],
                                     dt_bias=inputs["delta_bias"], dt_softplus=True, backend=backend)
        assert_close(y_t, y_scan[..., t], name=f"y at step {t}")
        if t == 0:  # one step from zero == selective_scan of length 1
            one = {k: (v[..., :1] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
            assert_close(y_t, selective_scan(**one, delta_softplus=True, backend=backend)[..., 0], name="T=1 scan")
    assert_close(state, last, name="state after L steps (updated in place)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["per_entry_A", "per_row_A_groups_differ", "no_z_no_softplus", "bf16_x", "threads"])
def test_fused_cpu_state_update_matches_reference(case, dtype, monkeypatch):
    """The fused C step (no gradient, contiguous state of the compute dtype) runs, updates the state in
    place and equals the torch step: A per entry, or expanded over N (one decay per row, Mamba-2's per-head
    A), B and C with different group counts, without z / softplus / bias / D, and bf16 inputs."""
    if cpu_update.KERNEL.load() is None:
        pytest.skip("no C compiler")
    from parazoo.ops.selective_scan import state_update
    from parazoo.ops.selective_scan.reference import selective_state_update_reference as ref

    def not_called(*a, **k):
        raise AssertionError("the torch step ran instead of the fused loop")

    g = torch.Generator().manual_seed(7)
    b, d, N = (2, 48, 700) if case == "threads" else (3, 12, 7)      # threads: more than 65536 entries, OpenMP-parallel
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    st = r(b, d, N).to(dtype)
    low = torch.bfloat16 if case == "bf16_x" else dtype
    x, dt, z, D, bias = (t.to(low) for t in (r(b, d), r(b, d), r(b, d), r(d), r(d)))
    A = -torch.rand(d, N, generator=g, dtype=torch.float64).to(dtype)
    B, C = r(b, 2, N).to(low), r(b, 2, N).to(low)
    if case == "per_row_A_groups_differ":
        A, C = A[:, :1].expand(d, N), r(b, 3, N).to(low)
    kw = dict(D=D, z=z, dt_bias=bias, dt_softplus=True)
    if case == "no_z_no_softplus":
        kw, dt = dict(), dt.abs()
    ey, est = ref(st, x, dt, A, B, C, **kw)
    monkeypatch.setattr(state_update, "selective_state_update_reference", not_called)
    s2 = st.clone()
    y = selective_state_update(s2, x, dt, A, B, C, backend="cpu", **kw)
    assert y.dtype == x.dtype
    assert_close(y, ey, dtype=low, name="y")
    assert_close(s2, est.to(dtype), dtype=dtype, name="state (in place)")


def _heads_step_inputs(b, H, P, N, G, seed=3):
    """Mamba-2's decode step in mamba_ssm's multi-head layout: per-head A, dt, D, dt_bias expanded over P (and
    A over N) with stride 0; and the same values per head for ssd_scan."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    per_head = dict(state=r(b, H, P, N), x=r(b, H, P), dt=r(b, H) * 0.5, A=-torch.rand(H, generator=g) - 0.1,
                    B=r(b, G, N), C=r(b, G, N), D=r(H), z=r(b, H, P), dt_bias=r(H) * 0.3)
    h = per_head
    heads = dict(x=h["x"], dt=h["dt"][..., None].expand(b, H, P), A=h["A"][:, None, None].expand(H, P, N),
                 B=h["B"], C=h["C"], D=h["D"][:, None].expand(H, P), z=h["z"], dt_bias=h["dt_bias"][:, None].expand(H, P))
    return per_head, heads


@pytest.mark.parametrize("G", [1, 3])
def test_state_update_multihead_layout_is_one_ssd_step(backend, G):
    """mamba_ssm's multi-head layout (state (batch, H, P, N), as Mamba-2 decodes) equals one step of ssd_scan
    continued from the state, and updates the state in place; head h reads group h // (H / G)."""
    b, H, P, N = 2, 6, 4, 5
    h, heads = _heads_step_inputs(b, H, P, N, G)
    y_ref, final = ssd_scan(h["x"][:, None], h["dt"][:, None], h["A"], h["B"][:, None], h["C"][:, None], 16, D=h["D"],
                            z=h["z"][:, None], dt_bias=h["dt_bias"], dt_softplus=True, initial_states=h["state"],
                            return_final_states=True, backend="reference")
    state = h["state"].clone()
    y = selective_state_update(state, **heads, dt_softplus=True, backend=backend)
    assert y.shape == (b, H, P)
    assert_close(y, y_ref[:, 0], name="y")
    assert_close(state, final, name="state (in place)")


def test_state_update_multihead_layout_takes_the_fused_cpu_step(monkeypatch):
    """The head-tied multi-head step (A, dt, D, dt_bias expanded over P and N) reaches the fused C step: the
    flattened state is a view of the caller's and A keeps N-stride 0 (one exp per channel)."""
    if cpu_update.KERNEL.load() is None:
        pytest.skip("no C compiler")
    from parazoo.ops.selective_scan import state_update

    def not_called(*a, **k):
        raise AssertionError("the torch step ran instead of the fused loop")

    b, H, P, N = 2, 6, 4, 5
    h, heads = _heads_step_inputs(b, H, P, N, 3)
    state = h["state"].clone()
    expected = selective_state_update(state.clone(), **heads, dt_softplus=True, backend="reference")
    monkeypatch.setattr(state_update, "selective_state_update_reference", not_called)
    seen, fused = [], cpu_update.step

    def spy(st, x, dt, A, *rest):
        seen.append((A.stride(), st.data_ptr() == state.data_ptr()))
        return fused(st, x, dt, A, *rest)

    monkeypatch.setattr(cpu_update, "step", spy)
    assert_close(selective_state_update(state, **heads, dt_softplus=True, backend="cpu"), expected, name="y")
    assert seen == [((1, 0), True)], seen


def test_state_update_multihead_layout_general_and_strided_state():
    """Per-entry A (H, P, N) and D, dt_bias (H, P) equal the channel layout on the flattened inputs, also when
    the state's (H, P) dims cannot be merged in place (a permuted view: updated through a copy written back)."""
    b, H, P, N = 2, 3, 4, 5
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g)
    x, dt, z, A = r(b, H, P), r(b, H, P), r(b, H, P), -torch.rand(H, P, N, generator=g)
    B, C, D, bias = r(b, N), r(b, 3, N), r(H, P), r(H, P)
    st = r(b, H, P, N)
    flat = st.reshape(b, H * P, N).clone()
    ey = selective_state_update(flat, x.reshape(b, -1), dt.reshape(b, -1), A.reshape(H * P, N), B, C, D.reshape(-1),
                                z.reshape(b, -1), bias.reshape(-1), dt_softplus=True, backend="reference")
    for state in (st.clone(), st.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)):
        y = selective_state_update(state, x, dt, A, B, C, D, z, bias, dt_softplus=True)
        assert_close(y, ey.view(b, H, P), name="y")
        assert_close(state, flat.view(b, H, P, N), name="state (in place)")


def test_state_update_multihead_layout_bad_inputs():
    b, H, P, N = 2, 4, 3, 5
    _, heads = _heads_step_inputs(b, H, P, N, 2)
    with pytest.raises(ValueError, match="groups must divide the number of heads H=4"):
        selective_state_update(torch.zeros(b, H, P, N), **{**heads, "B": torch.zeros(b, 3, N)})
    with pytest.raises(ValueError, match="'A'"):
        selective_state_update(torch.zeros(b, H, P, N), **{**heads, "A": torch.zeros(H * P, N)})
    with pytest.raises(ValueError, match="'x'"):
        selective_state_update(torch.zeros(b, H, P, N), **{**heads, "x": torch.zeros(b, H * P)})
    with pytest.raises(ValueError, match="'D'"):
        selective_state_update(torch.zeros(b, H, P, N), **{**heads, "D": torch.zeros(H)})


def test_state_update_gradients_match_reference():
    b, d, N = 2, 4, 3
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(b, d, N, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64),
            torch.randn(b, d, generator=g, dtype=torch.float64), -torch.rand(d, N, generator=g, dtype=torch.float64),
            torch.randn(b, 2, N, generator=g, dtype=torch.float64), torch.randn(b, N, generator=g, dtype=torch.float64),
            torch.randn(d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64),
            torch.randn(d, generator=g, dtype=torch.float64)]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(
        lambda s, *rest: selective_state_update(s.clone(), *rest[:7], dt_bias=rest[7], dt_softplus=True, backend="cpu"),
        args)


def _gradcheck(backend, softplus, cu=None, G=None, h0=False):
    inputs = _inputs(1, 2 if G else 1, 4, 2, G=G, dtype=torch.float64, seed=4, softplus=softplus, h0=h0)
    if h0 and cu is not None:                                  # one initial state per packed sequence
        inputs = _with_seq_states(inputs, cu.numel() - 1)
    names = [k for k, v in inputs.items() if v is not None]

    def f(*xs):
        y, last = selective_scan(**dict(zip(names, xs)), delta_softplus=softplus, return_last_state=True,
                                 cu_seqlens=cu, backend=backend)
        return y, last

    # the interpreter is slow: Triton uses gradcheck's fast mode (random projections of the Jacobian)
    assert torch.autograd.gradcheck(f, [inputs[k] for k in names], fast_mode=backend == "triton")


@pytest.mark.parametrize("softplus", [True, False])
def test_gradcheck_float64(backend, softplus):
    _gradcheck(backend, softplus, G=2 if softplus and backend != "triton" else None)


def test_gradcheck_float64_packed(backend):
    _gradcheck(backend, True, cu=torch.tensor([0, 1, 4], dtype=torch.int64))


def test_gradcheck_float64_initial_state(backend):
    _gradcheck(backend, True, h0=True)


def test_gradcheck_float64_packed_initial_states(backend):
    _gradcheck(backend, True, cu=torch.tensor([0, 1, 1, 4], dtype=torch.int64), h0=True)


def test_bfloat16_input(backend):
    _check_bfloat16(backend, (2, 4, 20, 4))


def test_bfloat16_input_blocked_kernel(cpu_backend):
    """bf16 B, C are converted to float32 copies for the blocked kernels (which must outlive the call)."""
    _check_bfloat16(cpu_backend, (1, 16, 20, 16))


def _check_bfloat16(backend, shape):
    inputs = _inputs(*shape, dtype=torch.bfloat16)
    y, last, grads = _run(inputs, backend, True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert all(grads[k].dtype == torch.bfloat16 for k in grads)
    ey, elast, egrads = _run(inputs, "reference", True, cast=torch.float64)
    assert_close(y, ey, name="y")
    assert_close(last, elast, dtype=torch.bfloat16, name="last_state")
    for k in grads:
        assert_close(grads[k], egrads[k], name=f"d{k}")


def test_non_contiguous_inputs(backend):
    base = _inputs(2, 4, 11, 3, dtype=torch.float64)
    # the same values laid out differently: time-major storage transposed back, and a strided A
    nc = {k: v.detach().clone() if v is not None else None for k, v in base.items()}
    for k in ("u", "delta", "z"):
        nc[k] = nc[k].transpose(1, 2).contiguous().transpose(1, 2)
    nc["B"] = nc["B"].transpose(1, 2).contiguous().transpose(1, 2)
    nc["A"] = torch.stack([nc["A"], nc["A"]], dim=-1)[..., 0]                 # stride (2N, 2)
    assert not nc["u"].is_contiguous() and not nc["A"].is_contiguous() and not nc["B"].is_contiguous()
    nc = {k: v.requires_grad_() if v is not None else None for k, v in nc.items()}
    _compare(_run(nc, backend, True), _run(base, "reference", True), torch.float64)


def test_auto_backend_on_cpu_tensors_is_the_cpu_path():
    inputs = _inputs(1, 2, 5, 2, dtype=torch.float32)
    assert_close(selective_scan(**inputs), selective_scan(**inputs, backend="cpu"))


@pytest.mark.parametrize("d,N,G", [(4, 3, 2), (16, 5, 1), (13, 5, 1), (16, 40, 1)])
def test_custom_op_is_registered_and_passes_opcheck(d, N, G):
    """(16, 5, 1): the channel-blocked kernels on a padded state; the outputs keep N entries. (13, 5, 1):
    on padded channels too; the outputs keep 13 channels. (16, 40, 1): checkpoints every 32 steps, which the
    fake's checkpoint shape must follow (L = 40: two chunks, one at 64)."""
    assert hasattr(torch.ops.parazoo, "selective_scan") and hasattr(torch.ops.parazoo, "selective_scan_bwd")
    inputs = _inputs(1, d, 40, N, G=G, dtype=torch.float32)
    h0 = torch.randn(1, d, N, requires_grad=True)
    cu = torch.tensor([0, 7, 7, 40])
    # without and with an initial state, and with one per packed sequence
    for init, packed in ((None, None), (h0, None), (torch.randn(3, d, N, requires_grad=True), cu)):
        args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
                inputs["delta_bias"], init, packed, True, True, "cpu")
        torch.library.opcheck(torch.ops.parazoo.selective_scan.default, args,
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("bad,match", [
    (dict(u=torch.randn(2, 4)), "'u'"),
    (dict(delta=torch.randn(2, 4, 8)), "'delta'"),
    (dict(A=torch.randn(4, 3, dtype=torch.complex64)), "complex"),
    (dict(A=torch.randn(5, 3)), "'A'"),
    (dict(B=torch.randn(2, 3, 4, 9)), "'B'"),            # 3 groups do not divide dim 4
    (dict(C=torch.randn(2, 2, 9)), "'C'"),               # N mismatch
    (dict(D=torch.randn(3)), "'D'"),
    (dict(z=torch.randn(2, 4, 8)), "'z'"),
    (dict(delta_bias=torch.randn(4, 1)), "'delta_bias'"),
    (dict(u=torch.randint(0, 3, (2, 4, 9))), "floating"),
    (dict(cu_seqlens=torch.tensor([0, 4, 9])), "batch size 1"),
    (dict(delta_softplus="yes"), "delta_softplus"),
    (dict(backend="gpu"), "backend"),
    (dict(initial_state=torch.randn(2, 4, 4)), "'initial_state'"),            # N mismatch
    (dict(initial_state=torch.randn(4, 3)), "'initial_state'"),
    (dict(initial_state=torch.zeros(2, 4, 3, dtype=torch.int64)), "'initial_state'"),
    (dict(initial_state=torch.zeros(1, 4, 3), u=torch.randn(1, 4, 9), delta=torch.rand(1, 4, 9), B=torch.randn(1, 3, 9),
          C=torch.randn(1, 3, 9), cu_seqlens=torch.tensor([0, 4, 9])), r"'initial_state'.*n_seqs.*\(2, 4, 3\)"),
])
def test_bad_inputs_raise_value_error(bad, match):
    args = dict(u=torch.randn(2, 4, 9), delta=torch.rand(2, 4, 9), A=-torch.rand(4, 3), B=torch.randn(2, 3, 9),
                C=torch.randn(2, 3, 9))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        selective_scan(**args)


def test_bad_packed_and_update_inputs_raise_value_error():
    args = dict(u=torch.randn(1, 4, 9), delta=torch.rand(1, 4, 9), A=-torch.rand(4, 3), B=torch.randn(1, 3, 9),
                C=torch.randn(1, 3, 9))
    with pytest.raises(ValueError, match="cu_seqlens"):
        selective_scan(**args, cu_seqlens=torch.tensor([0, 4, 8]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        selective_scan(**args, cu_seqlens=torch.tensor([0.0, 9.0]))
    st = torch.zeros(2, 4, 3)
    ok = dict(x=torch.randn(2, 4), dt=torch.rand(2, 4), A=-torch.rand(4, 3), B=torch.randn(2, 3), C=torch.randn(2, 3))
    for bad, match in [(dict(x=torch.randn(2, 5)), "dim=5"), (dict(B=torch.randn(2, 3, 3)), "'B'"),
                       (dict(A=torch.randn(4, 3, dtype=torch.complex64)), "complex"),
                       (dict(dt_bias=torch.randn(5)), "'dt_bias'")]:
        with pytest.raises(ValueError, match=match):
            selective_state_update(st, **{**ok, **bad})
    with pytest.raises(ValueError, match="'state'"):
        selective_state_update(torch.zeros(2, 4, 5), **ok)


@pytest.mark.slow
@pytest.mark.parametrize("L", [1000, 2100])
def test_long_sequences_match_reference(backend, L):
    """Many tiles / checkpoint chunks (63 and 132 interpreter tiles, 16 and 33 C chunks); the
    interpreter gets fewer channels (its cost is per program and tile); the CPU paths get 32
    channels in 2 groups of 16 with N = 16, so float32 takes the channel-blocked C kernels. (The
    tier took ~19 min while the reference's backward was quadratic in L; it unbinds time now.)"""
    b, d, N, G = (1, 2, 4, None) if backend == "triton" else (2, 32, 16, 2)
    inputs = _inputs(b, d, L, N, G=G, dtype=torch.float32, seed=L)
    _compare(_run(inputs, backend, True), _run(inputs, "reference", True, cast=torch.float64), torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("b,d", [(1, 4), (2, 30)])
def test_torch_compile_fullgraph(b, d):
    """(2, 30): the blocked kernels on padded channels, whose outputs must have the strides the fake
    implementation promises (contiguous) for inductor's stride asserts; forward and gradients."""
    inputs = _inputs(b, d, 9, 3, dtype=torch.float32)
    f = torch.compile(lambda **kw: selective_scan(**kw, delta_softplus=True, backend="cpu"), fullgraph=True)
    y = f(**inputs)
    assert y.is_contiguous()
    leaves = [v for v in inputs.values() if v is not None]
    got = torch.autograd.grad(y.sum(), leaves)
    y_ref = selective_scan(**inputs, delta_softplus=True, backend="reference")
    assert_close(y, y_ref, name="y")
    for name, a, e in zip([k for k, v in inputs.items() if v is not None], got, torch.autograd.grad(y_ref.sum(), leaves)):
        assert_close(a, e, name=f"d{name}")
