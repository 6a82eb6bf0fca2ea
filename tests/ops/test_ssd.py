"""ssd_scan (Mamba-2 SSD): reference vs chunked CPU path vs Triton kernels (interpreter).

Expected values come from the sequential reference in float64 on the same inputs; forward, final
states and the gradient of every floating input are compared with parazoo's per-dtype tolerances.
Decays are kept slow (|dt' A| <~ 0.3) so that states carried across chunks matter to the result.
"""
import random

import pytest
import torch

from parazoo.ops import ssd_scan
from parazoo.ops.testing import assert_close, use_cpu_path

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def make_inputs(b, L, H, P, G, N, dtype=torch.float64, D=None, z=False, dt_bias=False, init=False,
                n_states=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    ins = {
        "x": rn(b, L, H, P),
        "dt": torch.rand(b, L, H, generator=g, dtype=torch.float64) * 0.4 + 0.05,
        "A": -(torch.rand(H, generator=g, dtype=torch.float64) * 0.9 + 0.1),
        "B": rn(b, L, G, N) * 0.5,
        "C": rn(b, L, G, N) * 0.5,
        "D": None if D is None else (rn(H) if D == "H" else rn(H, P)),
        "z": rn(b, L, H, P) if z else None,
        "dt_bias": rn(H) * 0.5 if dt_bias else None,
        "initial_states": rn(n_states or b, H, P, N) if init else None,
    }
    return {k: (v.to(dtype) if v is not None else None) for k, v in ins.items()}


def run(backend, ins, chunk_size, dt_softplus=False, cu_seqlens=None, dtype=None, seed=1):
    """Forward (y, final states) and the gradient of every given input for a fixed random
    cotangent on both outputs."""
    leaves = {k: (v.detach().to(dtype or v.dtype).requires_grad_(True) if v is not None else None)
              for k, v in ins.items()}
    y, final = ssd_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk_size,
                        D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=dt_softplus,
                        initial_states=leaves["initial_states"], return_final_states=True,
                        cu_seqlens=cu_seqlens, backend=backend)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    gf = torch.randn(final.shape, generator=g, dtype=torch.float64).to(final.dtype)
    ((y * gy).sum() + (final * gf).sum()).backward()
    grads = {k: (v.grad if v is not None else None) for k, v in leaves.items()}
    return y, final, grads


def check_against(actual, expected, dtype):
    (y, f, gr), (ye, fe, ge) = actual, expected
    assert y.dtype == dtype
    assert_close(y, ye, dtype=dtype, name="y")
    assert_close(f, fe, dtype=dtype, name="final_states")
    assert f.is_contiguous(), "final_states (n, H, P, N) must be contiguous (decode steps update it in place)"
    for k in NAMES:
        if ge[k] is None:
            assert gr[k] is None
            continue
        assert gr[k] is not None, f"no gradient for {k}"
        assert gr[k].dtype == dtype, f"d{k} dtype {gr[k].dtype}"
        assert_close(gr[k], ge[k], dtype=dtype, name=f"d{k}")


# (b, L, H, P, G, N, chunk, options): lengths 1, 7, 63, 257, never a multiple of the chunk (but 1)
CPU_CASES = [
    (1, 1, 2, 3, 1, 4, 16, dict()),
    (2, 7, 4, 3, 4, 5, 16, dict(D="H", z=True)),
    (3, 63, 4, 5, 2, 6, 16, dict(D="HP", dt_bias=True, softplus=True, init=True)),
    (2, 63, 6, 3, 3, 4, 32, dict(z=True, init=True)),
    (1, 257, 4, 4, 1, 8, 64, dict(D="H", z=True, dt_bias=True, softplus=True, init=True)),
    (2, 257, 2, 3, 2, 5, 32, dict()),
    (1, 100, 2, 3, 1, 4, 4, dict(init=True)),   # chunk below 16
]


def _case(case, dtype):
    b, L, H, P, G, N, Q, o = case
    ins = make_inputs(b, L, H, P, G, N, D=o.get("D"), z=o.get("z", False), dt_bias=o.get("dt_bias", False),
                      init=o.get("init", False))
    return ins, Q, o.get("softplus", False)


def _ids(cases):
    return [f"b{c[0]}-L{c[1]}-H{c[2]}-G{c[4]}-Q{c[6]}-" + "-".join(f"{k}{v}" for k, v in c[7].items()) for c in cases]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CPU_CASES, ids=_ids(CPU_CASES))
def test_cpu_matches_reference(case, dtype):
    ins, Q, sp = _case(case, dtype)
    expected = run("reference", ins, Q, sp, dtype=torch.float64)
    check_against(run("cpu", ins, Q, sp, dtype=dtype), expected, dtype)


def _random_cases(n, seed=0):
    """n random (case, cu_seqlens cuts or None, threads, block_elems): heads, groups, head and state sizes,
    lengths and chunks (never a multiple of each other but by chance), every option on or off."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        H = rng.choice([1, 2, 3, 4, 6])
        o = {k: v for k, v in dict(D=rng.choice([None, "H", "HP"]), z=rng.random() < 0.6, dt_bias=rng.random() < 0.6,
                                   softplus=rng.random() < 0.7, init=rng.random() < 0.3).items() if v}
        b, L = rng.choice([1, 2, 3]), rng.choice([1, 2, 7, 63, 64, 65, 130, 257])
        cuts = sorted(rng.sample(range(1, L), min(3, L - 1))) if b == 1 and L > 3 and rng.random() < 0.35 else None
        case = (b, L, H, rng.choice([1, 3, 8, 16]), rng.choice([g for g in (1, 2, 3) if H % g == 0]),
                rng.choice([1, 2, 5, 16, 17]), rng.choice([1, 2, 16, 64, 256]), o)
        out.append((case, cuts, rng.choice([1, 2, 3]), rng.choice([1, 700, None])))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case,cuts,threads,block_elems", _random_cases(30), ids=[f"r{i}" for i in range(30)])
def test_cpu_random_shapes_match_reference(case, cuts, threads, block_elems, dtype, monkeypatch):
    """The CPU path against the float64 reference on random shapes and options (packed sequences among
    them), on 1-3 threads, with one chunk per backward block, a few, or the default."""
    from parazoo.ops.ssd import cpu

    if block_elems is not None:
        monkeypatch.setattr(cpu, "BLOCK_ELEMS", block_elems)
    b, L, H, P, G, N, Q, o = case
    cu = None if cuts is None else torch.tensor([0, *cuts, L], dtype=torch.int32)
    ins = make_inputs(b, L, H, P, G, N, D=o.get("D"), z=o.get("z", False), dt_bias=o.get("dt_bias", False),
                      init=o.get("init", False), n_states=None if cu is None else len(cuts) + 1)
    sp = o.get("softplus", False)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        expected = run("reference", ins, Q, sp, cu_seqlens=cu, dtype=torch.float64)
        check_against(run("cpu", ins, Q, sp, cu_seqlens=cu, dtype=dtype), expected, dtype)
    finally:
        torch.set_num_threads(old)


# The CPU backward is hand-written (ops/ssd/cpu_bwd.py) and runs over blocks of chunks; a block
# size of one chunk puts every state and state gradient through the carry between blocks.
BLOCK_CASES = [
    (2, 63, 4, 5, 2, 6, 16, dict(D="HP", dt_bias=True, softplus=True, init=True)),
    (1, 257, 6, 4, 3, 8, 32, dict(D="H", z=True, init=True)),
    (3, 40, 2, 3, 1, 4, 8, dict()),
]


def _loops(kind, monkeypatch):
    """Chunk-state passing, the intra-chunk matrices, the block outputs, the gate's backward, the
    backward's per-token sums (ds) and the input gradients through their fused C loops (skipped without a
    compiler) or their torch fallbacks."""
    from parazoo.ops.ssd import cpu_decay, cpu_ds, cpu_grad, cpu_output, cpu_passing

    use_cpu_path(kind, monkeypatch, *(m.KERNEL for m in (cpu_passing, cpu_decay, cpu_output, cpu_ds, cpu_grad)))


@pytest.mark.parametrize("loops", ["c", "torch"])
@pytest.mark.parametrize("block_elems", [1, 700])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=_ids(BLOCK_CASES))
def test_cpu_backward_over_blocks_matches_reference(case, dtype, block_elems, loops, monkeypatch):
    from parazoo.ops.ssd import cpu

    monkeypatch.setattr(cpu, "BLOCK_ELEMS", block_elems)
    _loops(loops, monkeypatch)
    ins, Q, sp = _case(case, dtype)
    expected = run("reference", ins, Q, sp, dtype=torch.float64)
    check_against(run("cpu", ins, Q, sp, dtype=dtype), expected, dtype)


@pytest.mark.parametrize("loops", ["c", "torch"])
@pytest.mark.parametrize("block_elems", [1, 10 ** 6])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_backward_over_blocks_cu_seqlens(dtype, block_elems, loops, monkeypatch):
    """Packed sequences (one empty, one of length 1, one ending exactly on a chunk), one chunk per
    block or all in one: the state gradient must stop at every sequence start and restart from
    d final."""
    from parazoo.ops.ssd import cpu

    monkeypatch.setattr(cpu, "BLOCK_ELEMS", block_elems)
    _loops(loops, monkeypatch)
    lens = [8, 0, 21, 1, 12]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    ins = make_inputs(1, sum(lens), 4, 3, 2, 5, D="H", z=True, dt_bias=True, init=True, n_states=len(lens))
    expected = run("reference", ins, 8, True, cu_seqlens=cu)
    check_against(run("cpu", ins, 8, True, cu_seqlens=cu, dtype=dtype), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("Q, G, R", [(7, 1, 1), (64, 2, 3)])
def test_decay_mask_kernel_matches_definition(Q, G, R, dtype):
    """The fused C loop against its definition: exp(max(s_i - s_j, floor)), times the head's group's
    C B^T and the column's w_j, plus the head's d on the diagonal, on and below the diagonal and
    exactly 0 above; decays strong enough to hit the floor; every combination of the optional factors."""
    from parazoo.ops.ssd import cpu_decay
    from parazoo.ops.ssd.cpu import EXP_FLOOR

    if cpu_decay.KERNEL.load() is None:
        pytest.skip("no C compiler: the fused decay loop is unavailable")
    g = torch.Generator().manual_seed(0)
    H, lead = G * R, (2, 3)

    def rn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    steps = torch.rand(*lead, H, Q, generator=g, dtype=torch.float64) * 0.5
    steps[..., Q // 2] = 100.0                                                       # a jump past the floor
    s = (-steps.cumsum(-1)).to(dtype)                                                # (2, 3, H, Q), decreasing
    cb, w, d = rn(*lead, G, Q, Q), rn(*lead, H, Q), rn(H)
    floor = EXP_FLOOR[torch.float64 if dtype == torch.float64 else torch.float32]
    i, j = torch.arange(Q)[:, None], torch.arange(Q)[None, :]
    decay = torch.exp((s[..., :, None] - s[..., None, :]).clamp(min=floor).where(j <= i, 0.0)) * (j <= i)
    rtol = 1e-14 if dtype == torch.float64 else 2e-6
    for use_cb, use_w, use_d in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)]:
        want = decay.clone()
        if use_cb:
            want = want * cb.repeat_interleave(R, dim=-3)
        if use_w:
            want = want * w[..., None, :]
        if use_d:
            want = want + torch.diag_embed(d[:, None].expand(H, Q))
        got = cpu_decay.decay_mask(s.contiguous(), floor, cb if use_cb else None, R, w if use_w else None,
                                   d if use_d else None)
        assert got.shape == (*lead, H, Q, Q) and got.dtype == dtype
        assert (got.tril() == got).all() and not got.isnan().any()
        torch.testing.assert_close(got, want, rtol=rtol, atol=0)


@pytest.mark.parametrize("loops", ["c", "torch"])
@pytest.mark.parametrize("block_elems", [1, 10 ** 6])
@pytest.mark.parametrize("packed", [False, True])
def test_cpu_no_grad_forward_equals_grad_forward(packed, block_elems, loops, monkeypatch):
    """Without a backward to follow, the CPU path keeps no per-chunk states (each block's own buffer)
    and no ungated y: the outputs must be bitwise those of the forward that keeps them, over one chunk
    per block and over one block, with packed sequences that start and end inside blocks."""
    from parazoo.ops.ssd import cpu

    monkeypatch.setattr(cpu, "BLOCK_ELEMS", block_elems)
    _loops(loops, monkeypatch)
    if packed:
        lens = [8, 0, 21, 1, 12]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        ins = make_inputs(1, sum(lens), 4, 3, 2, 5, D="H", z=True, dt_bias=True, init=True, n_states=len(lens))
    else:
        cu = None
        ins = make_inputs(3, 45, 6, 3, 3, 4, D="HP", z=True, init=True)

    def fwd():
        return ssd_scan(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 8, D=ins["D"], z=ins["z"],
                        dt_bias=ins["dt_bias"], dt_softplus=True, initial_states=ins["initial_states"],
                        return_final_states=True, cu_seqlens=cu, backend="cpu")

    with torch.no_grad():
        y0, f0 = fwd()
    ins["x"] = ins["x"].clone().requires_grad_(True)
    y1, f1 = fwd()
    assert y1.requires_grad and not y0.requires_grad
    assert torch.equal(y0, y1.detach()) and torch.equal(f0, f1.detach())


@pytest.mark.parametrize("use", ["y", "final"])
def test_cpu_backward_one_output_only(use):
    """Only y or only the final states reach the loss: the other cotangent arrives as zeros/None."""
    ins = make_inputs(2, 37, 4, 3, 2, 5, D="HP", init=True)
    grads = {}
    for backend in ("reference", "cpu"):
        leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in ins.items()}
        y, f = ssd_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], 16, D=leaves["D"],
                        initial_states=leaves["initial_states"], return_final_states=True, backend=backend)
        (y if use == "y" else f).square().sum().backward()
        grads[backend] = {k: v.grad for k, v in leaves.items() if v is not None}
    for k, ref in grads["reference"].items():
        got = grads["cpu"][k]
        if ref is None:           # C does not reach the final state
            assert got is None or not got.any(), k
            continue
        assert_close(got, ref, name=f"d{k}")


@pytest.mark.parametrize("packed", [False, True])
def test_cpu_backward_detects_y_modified_in_place(packed):
    """Without z the backward reads the forward's y (y_pre): changing y in place raises (at the
    in-place op where y is a view of the chunk layout, else in the backward) instead of giving
    wrong gradients."""
    ins = make_inputs(1, 40, 2, 3, 1, 4, D="H")
    cu = torch.tensor([0, 13, 40], dtype=torch.int32) if packed else None
    leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in ins.items()}
    y = ssd_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], 16, D=leaves["D"],
                 cu_seqlens=cu, backend="cpu")
    with pytest.raises(RuntimeError, match="inplace"):
        y.mul_(2)
        y.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_strong_decay_matches_reference(dtype):
    """Decays strong enough that exp(s_i - s_j) underflows inside a chunk (the CPU path floors those
    exponents, see EXP_FLOOR): still equal to the reference, gradients included, nothing NaN."""
    ins = make_inputs(1, 70, 3, 4, 1, 5, D="H", init=True)
    ins["dt"] = ins["dt"] * 40                      # |dt' A| up to ~18 per step: ~1000 over a chunk of 64
    expected = run("reference", ins, 64, dtype=torch.float64)
    check_against(run("cpu", ins, 64, dtype=dtype), expected, dtype)


def test_cpu_backward_is_the_hand_written_one():
    """The CPU path's gradient comes from its own backward (the custom op parazoo::ssd_chunked's autograd
    node), not from autograd through the chunked forward."""
    ins = make_inputs(1, 20, 2, 3, 1, 4, dtype=torch.float32)
    x = ins["x"].requires_grad_(True)
    y = ssd_scan(x, ins["dt"], ins["A"], ins["B"], ins["C"], 16, backend="cpu")
    names, todo, seen = set(), [y.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo += [f for f, _ in fn.next_functions]
    assert "GeneratedBackwardFor_parazoo_ssd_chunked_defaultBackward" in names, names
    assert not names & {"BmmBackward0", "ExpBackward0", "CumsumBackward0"}, names


# (case, dtypes): the interpreter is slow, so each case runs in the dtypes that add coverage
TRITON_CASES = [
    ((1, 1, 2, 3, 1, 4, 16, dict(D="H", init=True)), (torch.float64, torch.float32)),
    ((2, 7, 4, 3, 2, 5, 16, dict(D="HP", z=True, dt_bias=True, softplus=True, init=True)), (torch.float64,)),
    ((1, 63, 2, 5, 2, 6, 32, dict(z=True, D="H")), (torch.float32,)),
    ((1, 63, 2, 3, 1, 4, 16, dict(dt_bias=True, init=True)), (torch.float32,)),
    ((1, 7, 2, 3, 1, 4, 4, dict(init=True)), (torch.float64,)),  # chunk < 16: kernels use 16
    # P 40: dB / dC sum over P in 16-wide slices (0, 16, 32: three, the last one masked past P),
    # dx and the forward hold P in one 64-wide tile; 2 heads per group in dB / dC's head loop
    ((1, 40, 2, 40, 1, 5, 16, dict(D="H", z=True, init=True)), (torch.float32,)),
]
TRITON_PARAMS = [pytest.param(c, d, id=_ids([c])[0] + f"-{str(d)[6:]}") for c, ds in TRITON_CASES for d in ds]
TRITON_SLOW = [
    (2, 257, 2, 3, 1, 4, 64, dict(D="HP", z=True, init=True)),
    (1, 257, 4, 20, 2, 40, 16, dict(dt_bias=True, softplus=True, init=True)),  # P, N over one 16/32 tile
]


@pytest.mark.parametrize("case,dtype", TRITON_PARAMS)
def test_triton_matches_reference(case, dtype, triton_interpreter):
    ins, Q, sp = _case(case, dtype)
    expected = run("reference", ins, Q, sp, dtype=torch.float64)
    check_against(run("triton", ins, Q, sp, dtype=dtype), expected, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("case", TRITON_SLOW, ids=_ids(TRITON_SLOW))
def test_triton_matches_reference_long(case, triton_interpreter):
    ins, Q, sp = _case(case, torch.float32)
    expected = run("reference", ins, Q, sp, dtype=torch.float64)
    check_against(run("triton", ins, Q, sp, dtype=torch.float32), expected, torch.float32)


def test_triton_257_one_case(triton_interpreter):
    ins = make_inputs(1, 257, 2, 3, 2, 4, D="H", z=True, init=True)
    check_against(run("triton", ins, 64, True, dtype=torch.float32),
                  run("reference", ins, 64, True, dtype=torch.float64), torch.float32)


def test_triton_multi_tile_loops(triton_interpreter, monkeypatch):
    """16-wide row and N tiles: several causal row blocks per chunk and several N tiles."""
    from parazoo.ops.ssd import triton_op

    monkeypatch.setattr(triton_op, "MAX_BM", 16)
    monkeypatch.setattr(triton_op, "MAX_BN", 16)
    ins = make_inputs(1, 40, 2, 5, 1, 20, D="H", z=True, init=True)
    check_against(run("triton", ins, 32, True, dtype=torch.float32),
                  run("reference", ins, 32, True, dtype=torch.float64), torch.float32)


@pytest.mark.parametrize("cap", [(8, 0), (8, 6), (9, 0), (10, 0)])
def test_triton_tiles_per_target_are_the_compiled_ones(cap, monkeypatch):
    """The forward's row tile on each target is the one its AOT instantiation compiles (spill-free:
    tests/test_triton_aot.py); 64 spills on sm_80."""
    pytest.importorskip("triton")
    from parazoo.ops.ssd import triton_fwd, triton_op

    monkeypatch.setattr(triton_op, "_capability", lambda device: cap)
    x = torch.zeros(1, 2048, 24, 64)                                              # Mamba-2 130M: H 24, P 64
    plan = triton_op._Plan(x, torch.zeros(1, 2048, 1, 128), 256, None)
    target = 90 if cap >= (9, 0) else 80
    specs = [s for s in triton_fwd.AOT_SPECS if s.name in ("_ssd_chunk_out_fwd", "_ssd_chunk_state")
             and target in s.caps]
    assert len(specs) == 3
    for spec in specs:
        c = spec.constexprs
        assert (c.get("BM", c.get("BK")), c["BP"], c["BN"]) == (plan.BM, plan.BP, plan.BN), spec.id
        assert (spec.num_warps, spec.num_stages) == (plan.warps, plan.stages), spec.id
    assert plan.BM == (64 if target == 90 else 32)


def test_chunk_size_does_not_change_the_result():
    ins = make_inputs(2, 77, 4, 3, 2, 5, D="H", z=True, init=True)
    base = run("cpu", ins, 8)
    for Q in (1, 16, 64, 128):
        check_against(run("cpu", ins, Q), base, torch.float64)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_cu_seqlens_packed_equals_separate(backend, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpreter")
    lens = [5, 0, 19, 1, 12]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    L = sum(lens)
    ins = make_inputs(1, L, 2, 3, 2, 5, D="HP", z=True, dt_bias=True, init=True, n_states=len(lens))
    packed = run(backend, ins, 16, True, cu_seqlens=cu)
    # each sequence on its own, with the same cotangents
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(packed[0].shape, generator=g, dtype=torch.float64)
    gf = torch.randn(packed[1].shape, generator=g, dtype=torch.float64)
    leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in ins.items()}
    total = 0
    ys, fs = [], []
    for k in range(len(lens)):
        lo, hi = int(cu[k]), int(cu[k + 1])
        y, f = ssd_scan(leaves["x"][:, lo:hi], leaves["dt"][:, lo:hi], leaves["A"], leaves["B"][:, lo:hi],
                        leaves["C"][:, lo:hi], 16, D=leaves["D"], z=leaves["z"][:, lo:hi], dt_bias=leaves["dt_bias"],
                        dt_softplus=True, initial_states=leaves["initial_states"][k:k + 1],
                        return_final_states=True, backend="cpu")
        total = total + (y * gy[:, lo:hi]).sum() + (f * gf[k:k + 1]).sum()
        ys.append(y)
        fs.append(f)
    total.backward()
    separate = (torch.cat(ys, 1), torch.cat(fs, 0), {k: (v.grad if v is not None else None) for k, v in leaves.items()})
    check_against(packed, separate, torch.float64)
    # and the packed reference agrees too
    check_against(packed, run("reference", ins, 16, True, cu_seqlens=cu), torch.float64)


def test_cu_seqlens_resets_the_state():
    """A test that can fail: packing two sequences without the reset changes the second one."""
    ins = make_inputs(1, 40, 2, 3, 1, 4)
    cu = torch.tensor([0, 20, 40])
    y_packed = ssd_scan(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 16, cu_seqlens=cu, backend="cpu")
    y_plain = ssd_scan(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 16, backend="cpu")
    assert torch.equal(y_packed[:, :20], y_plain[:, :20]) or torch.allclose(y_packed[:, :20], y_plain[:, :20])
    assert (y_packed[:, 20:] - y_plain[:, 20:]).abs().max() > 1e-3


# seq_idx rows: row 0 holds three sequences starting at index 0; row 1 one sequence of index 2 (it starts
# from zeros even with initial states: only sequence 0 takes them); row 2 two, the first of length 1
SEQ_IDX = torch.tensor([[0] * 9 + [1] * 20 + [4] * 8,
                        [2] * 37,
                        [0] + [1] * 36])


def _segments(seq_idx):
    """(row, start, stop) of every sequence of every row of seq_idx, in order."""
    out = []
    for r, row in enumerate(seq_idx.tolist()):
        start = 0
        for t in range(1, len(row) + 1):
            if t == len(row) or row[t] != row[t - 1]:
                out.append((r, start, t))
                start = t
    return out


def _run_seq_idx(backend, ins, seq_idx, dtype, **kw):
    """y, per-row final states and the gradients of a fixed random cotangent, through seq_idx."""
    leaves = {k: (v.detach().to(dtype).requires_grad_(True) if v is not None else None) for k, v in ins.items()}
    y, final = ssd_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], 16, D=leaves["D"],
                        z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True,
                        initial_states=leaves["initial_states"], return_final_states=True, seq_idx=seq_idx,
                        backend=backend, **kw)
    g = torch.Generator().manual_seed(3)
    gy, gf = (torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in (y, final))
    ((y * gy).sum() + (final * gf).sum()).backward()
    return y, final, {k: (v.grad if v is not None else None) for k, v in leaves.items()}, (gy, gf)


def _seq_idx_separately(ins, seq_idx, cot):
    """The same outputs and gradients from the reference run on every sequence by itself: a row's initial
    state goes to its first sequence when that sequence's index is 0, zeros to every other one."""
    gy, gf = (t.double() for t in cot)
    leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in ins.items()}
    b, L, H, P = ins["x"].shape
    N = ins["B"].shape[-1]
    rows, finals, total = [[] for _ in range(b)], [None] * b, 0
    for r, lo, hi in _segments(seq_idx):
        init = None
        if leaves["initial_states"] is not None:
            init = (leaves["initial_states"][r:r + 1] if lo == 0 and int(seq_idx[r, 0]) == 0
                    else torch.zeros(1, H, P, N, dtype=torch.float64))
        y, f = ssd_scan(leaves["x"][r:r + 1, lo:hi], leaves["dt"][r:r + 1, lo:hi], leaves["A"],
                        leaves["B"][r:r + 1, lo:hi], leaves["C"][r:r + 1, lo:hi], 16, D=leaves["D"],
                        z=leaves["z"][r:r + 1, lo:hi], dt_bias=leaves["dt_bias"], dt_softplus=True,
                        initial_states=init, return_final_states=True, backend="reference")
        rows[r].append(y)
        finals[r] = f
        total = total + (y * gy[r:r + 1, lo:hi]).sum()
    final = torch.cat(finals, 0)
    (total + (final * gf).sum()).backward()
    y = torch.cat([torch.cat(parts, 1) for parts in rows], 0)
    return y, final, {k: (v.grad if v is not None else None) for k, v in leaves.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_seq_idx_equals_each_sequence_separately(backend, dtype, request):
    """mamba_ssm's seq_idx (any batch size): forward, per-row final states and every gradient equal the
    reference run on each sequence by itself."""
    if backend == "triton":
        request.getfixturevalue("triton_interpreter")
    ins = make_inputs(3, 37, 4, 3, 2, 5, D="HP", z=True, dt_bias=True, init=True)
    y, final, grads, cot = _run_seq_idx(backend, ins, SEQ_IDX, dtype)
    check_against((y, final, grads), _seq_idx_separately(ins, SEQ_IDX, cot), dtype)


def test_seq_idx_resets_and_initial_state_rule():
    """Tests that can fail: a constant seq_idx is the plain scan; the reset changes the later sequences; a
    row that does not start at sequence 0 ignores its initial state."""
    ins = make_inputs(3, 37, 2, 3, 1, 4, init=True)
    args = (ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 16)
    plain = ssd_scan(*args, initial_states=ins["initial_states"], backend="cpu")
    same = ssd_scan(*args, initial_states=ins["initial_states"], seq_idx=torch.zeros(3, 37, dtype=torch.int32),
                    backend="cpu")
    assert_close(same, plain, dtype=torch.float64, name="y")
    y = ssd_scan(*args, initial_states=ins["initial_states"], seq_idx=SEQ_IDX, backend="cpu")
    assert_close(y[0, :9], plain[0, :9], dtype=torch.float64, name="y before the first boundary")
    assert (y[0, 9:] - plain[0, 9:]).abs().max() > 1e-3
    no_init = ssd_scan(*args, backend="cpu")
    assert_close(y[1], no_init[1], dtype=torch.float64, name="row starting at sequence 2")
    assert (y[1] - plain[1]).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_seq_idx_with_cu_seqlens_returns_varlen_states(backend, request):
    """mamba_ssm's varlen call: batch 1, seq_idx and cu_seqlens of the same sequences,
    return_varlen_states -> (y, final state of the row, last state of every sequence)."""
    if backend == "triton":
        request.getfixturevalue("triton_interpreter")
    ins = make_inputs(1, 37, 2, 3, 1, 4, init=True)
    seq_idx = SEQ_IDX[:1]
    cu = torch.tensor([0, 9, 29, 37], dtype=torch.int32)
    args = (ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 16)
    y, final, varlen = ssd_scan(*args, initial_states=ins["initial_states"], seq_idx=seq_idx, cu_seqlens=cu,
                                return_final_states=True, return_varlen_states=True, backend=backend)
    per_seq = torch.cat([ins["initial_states"], torch.zeros(2, 2, 3, 4, dtype=torch.float64)])
    y_cu, f_cu = ssd_scan(*args, initial_states=per_seq, cu_seqlens=cu, return_final_states=True, backend="reference")
    assert_close(y, y_cu, dtype=torch.float64, name="y")
    assert varlen.shape == (3, 2, 3, 4) and final.shape == (1, 2, 3, 4)
    assert_close(varlen, f_cu, dtype=torch.float64, name="varlen_states")
    assert_close(final, f_cu[-1:], dtype=torch.float64, name="final_states")
    # cu_seqlens alone (parazoo's per-sequence initial states): the same varlen states, and y, varlen only
    y2, varlen2 = ssd_scan(*args, initial_states=per_seq, cu_seqlens=cu, return_varlen_states=True, backend=backend)
    assert_close(y2, y_cu, dtype=torch.float64, name="y")
    assert_close(varlen2, f_cu, dtype=torch.float64, name="varlen_states")


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_dt_limit_clamps_after_softplus(backend, request):
    """dt_limit = (lo, hi): the scan sees clamp(softplus(dt + dt_bias), lo, hi), and no gradient flows to
    dt or dt_bias where it clamps."""
    if backend == "triton":
        request.getfixturevalue("triton_interpreter")
    ins = make_inputs(2, 23, 3, 2, 1, 4, D="H", dt_bias=True)
    ins["dt"] = torch.randn(2, 23, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 2
    lo, hi = 0.2, 1.5
    pre = torch.nn.functional.softplus(ins["dt"] + ins["dt_bias"])
    assert ((pre < lo).sum() > 5) and ((pre > hi).sum() > 5), "the case must clamp on both sides"
    outs = []
    for limit in ((lo, hi), "explicit"):
        leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in ins.items()}
        if limit == "explicit":     # the clamp written out, into the reference
            dtp = torch.nn.functional.softplus(leaves["dt"] + leaves["dt_bias"]).clamp(lo, hi)
            y = ssd_scan(leaves["x"], dtp, leaves["A"], leaves["B"], leaves["C"], 8, D=leaves["D"],
                         backend="reference")
        else:
            y = ssd_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], 8, D=leaves["D"],
                         dt_bias=leaves["dt_bias"], dt_softplus=True, dt_limit=limit, backend=backend)
        y.pow(2).sum().backward()
        outs.append((y, {k: leaves[k].grad for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")}))
    (y, g), (ye, ge) = outs
    assert_close(y, ye, dtype=torch.float64, name="y")
    for k in g:
        assert_close(g[k], ge[k], dtype=torch.float64, name=f"d{k}")
    clamped = (pre < lo) | (pre > hi)
    assert bool((g["dt"][clamped] == 0).all()) and bool((g["dt"][~clamped] != 0).all())
    # without dt_limit the same inputs give another result
    y_free = ssd_scan(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 8, D=ins["D"], dt_bias=ins["dt_bias"],
                      dt_softplus=True, backend=backend)
    assert (y_free - y.detach()).abs().max() > 1e-3


def test_mamba_ssm_keyword_call_ports():
    """mamba_ssm's Mamba-2 calls mamba_chunk_scan_combined with these keywords; the same call runs here."""
    ins = make_inputs(2, 20, 4, 3, 2, 5, dtype=torch.float32, D="H", z=True, dt_bias=True)
    y, final = ssd_scan(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], chunk_size=8, D=ins["D"], z=ins["z"],
                        dt_bias=ins["dt_bias"], dt_softplus=True, seq_idx=None, cu_seqlens=None,
                        dt_limit=(0.0, float("inf")), return_final_states=True, return_varlen_states=False)
    y0, f0 = ssd_scan(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 8, D=ins["D"], z=ins["z"],
                      dt_bias=ins["dt_bias"], dt_softplus=True, return_final_states=True)
    assert_close(y, y0, dtype=torch.float32, name="y")
    assert_close(final, f0, dtype=torch.float32, name="final_states")


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=pytest.mark.slow)])
def test_gradcheck_float64(backend, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpreter")
    ins = make_inputs(1, 5, 2, 2, 1, 2, D="H", z=True, dt_bias=True, init=True)
    keys = [k for k in NAMES if ins[k] is not None]

    def f(*args):
        kw = dict(zip(keys, args))
        y, fin = ssd_scan(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 4, D=kw["D"], z=kw["z"],
                          dt_bias=kw["dt_bias"], dt_softplus=True, initial_states=kw["initial_states"],
                          return_final_states=True, backend=backend)
        return y, fin

    args = [ins[k].clone().requires_grad_(True) for k in keys]
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=backend == "triton")


def test_final_states_only_gradient(triton_interpreter):
    """Backward when only the final state is used (dy arrives as None / zeros)."""
    ins = make_inputs(1, 20, 2, 3, 1, 4, init=True)
    outs = {}
    for be in ("reference", "triton"):
        leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in ins.items()}
        _, fin = ssd_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], 16,
                          initial_states=leaves["initial_states"], return_final_states=True, backend=be)
        fin.sum().backward()
        outs[be] = {k: v.grad for k, v in leaves.items() if v is not None}
    for k, ref in outs["reference"].items():
        ref = torch.zeros_like(ins[k]) if ref is None else ref       # C does not reach the final state
        assert_close(outs["triton"][k], ref, name=f"d{k}")


def test_cpu_path_memory_grows_with_chunk_not_state():
    """Autograd through the chunked path saves O(L * H * (Q + P + N)) numbers, never L x P x N."""
    b, L, H, P, G, N, Q = 1, 512, 2, 16, 1, 64, 32
    ins = make_inputs(b, L, H, P, G, N, dtype=torch.float32)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    leaves = {k: (v.requires_grad_(True) if v is not None else None) for k, v in ins.items()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ssd_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], Q, backend="cpu")
    per_chunk_states = (L // Q) * H * P * N               # one (P, N) state per chunk and head
    bound = 16 * b * L * H * (Q + P + N) + 4 * per_chunk_states
    assert sum(saved) < bound, (sum(saved), bound)
    assert sum(saved) < b * L * H * P * N                  # the per-step state is never stored


BAD = [
    (dict(chunk_size=24), "chunk_size"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(B=torch.randn(1, 8, 3, 4), C=torch.randn(1, 8, 3, 4)), "groups"),
    (dict(C=torch.randn(1, 8, 2, 5)), "'C'"),
    (dict(dt=torch.rand(1, 9, 4)), "'dt'"),
    (dict(A=torch.rand(3)), "'A'"),
    (dict(x=torch.randn(1, 8, 4)), "'x'"),
    (dict(B=torch.randn(1, 8, 2, 4, dtype=torch.float64)), "'B'"),
    (dict(x=torch.randint(0, 3, (1, 8, 4, 3))), "'x'"),
    (dict(D=torch.randn(4, 2)), "'D'"),
    (dict(D=torch.randn(4, 3, 1)), "'D'"),
    (dict(z=torch.randn(1, 8, 4, 2)), "'z'"),
    (dict(dt_bias=torch.randn(5)), "'dt_bias'"),
    (dict(initial_states=torch.randn(1, 4, 3, 5)), "'initial_states'"),
    (dict(cu_seqlens=torch.tensor([0, 3, 7])), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0.0, 8.0])), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 8]), initial_states=torch.randn(2, 4, 3, 4)), "'initial_states'"),
    (dict(x=torch.randn(2, 8, 4, 3), dt=torch.rand(2, 8, 4), B=torch.randn(2, 8, 2, 4), C=torch.randn(2, 8, 2, 4),
          cu_seqlens=torch.tensor([0, 8])), "batch size 1"),
    (dict(backend="gpu"), "backend"),
    (dict(seq_idx=torch.zeros(1, 8)), "'seq_idx'.*integer"),
    (dict(seq_idx=torch.zeros(1, 7, dtype=torch.int32)), r"'seq_idx'.*shape \(batch, L\)"),
    (dict(seq_idx=torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2]])), "'seq_idx'.*non-decreasing.*t=3"),
    (dict(seq_idx=torch.full((1, 8), -1)), "'seq_idx'.*>= 0"),
    (dict(seq_idx=torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]]), cu_seqlens=torch.tensor([0, 3, 8])),
     "'cu_seqlens' and 'seq_idx'"),
    (dict(seq_idx=torch.zeros(1, 8, dtype=torch.int64), initial_states=torch.randn(2, 4, 3, 4)), "'initial_states'"),
    (dict(dt_limit=(1.0, 0.5)), "'dt_limit'.*lo <= hi"),
    (dict(dt_limit=0.5), "'dt_limit'.*pair"),
    (dict(return_varlen_states=True), "'cu_seqlens'"),
]


@pytest.mark.parametrize("bad,match", BAD, ids=[m + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_inputs_raise_value_error(bad, match):
    args = dict(x=torch.randn(1, 8, 4, 3), dt=torch.rand(1, 8, 4), A=-torch.rand(4), B=torch.randn(1, 8, 2, 4),
                C=torch.randn(1, 8, 2, 4), chunk_size=16)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ssd_scan(**args)


def test_auto_backend_runs_cpu_path_and_matches():
    ins = make_inputs(1, 9, 2, 3, 1, 4, dtype=torch.float32)
    y_auto = ssd_scan(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 16)
    y_cpu = ssd_scan(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 16, backend="cpu")
    assert torch.equal(y_auto, y_cpu)


@pytest.mark.parametrize("opts", [dict(D="H", z=True), dict(D="HP", dt_bias=True, softplus=True, init=True),
                                  dict(z=True, cu=True, init=True)], ids=["D_z", "DHP_bias_init", "packed_z_init"])
def test_cpu_custom_op_passes_opcheck(opts):
    """parazoo::ssd_chunked (the CPU path): schema, fake (the states buffer's static size, also for packed
    sequences) and autograd registration."""
    from parazoo.ops.ssd.cpu import _ssd_chunked_op

    cu = torch.tensor([0, 3, 3, 20, 23], dtype=torch.int32) if opts.get("cu") else None
    ins = make_inputs(1, 23, 4, 3, 2, 5, dtype=torch.float32, D=opts.get("D"), z=opts.get("z", False),
                      dt_bias=False, init=opts.get("init", False), n_states=None if cu is None else 4)
    args = [None if ins[k] is None else ins[k].clone().requires_grad_(True)
            for k in ("x", "dt", "A", "B", "C", "D", "z", "initial_states")]
    torch.library.opcheck(_ssd_chunked_op, (*args, cu, 8, True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.slow
def test_cpu_compile_fullgraph_forward_and_backward():
    """ssd_scan's CPU path under torch.compile(fullgraph=True) with inductor: no graph break at its C loops,
    y, final states and every gradient equal to eager."""
    ins = make_inputs(1, 23, 4, 3, 2, 5, dtype=torch.float32, D="H", z=True, dt_bias=True, init=True)
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")

    def f(*a):
        return ssd_scan(*a[:5], 16, D=a[5], z=a[6], dt_bias=a[7], dt_softplus=True, initial_states=a[8],
                        return_final_states=True, backend="cpu")

    out = {}
    for mode, fn in (("eager", f), ("compiled", torch.compile(f, fullgraph=True))):
        leaves = [ins[k].clone().requires_grad_(True) for k in names]
        y, fin = fn(*leaves)
        g = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + fin.square().sum(), leaves)
        out[mode] = (y, fin, *g)
    for name, a, e in zip(("y", "final", *names), out["compiled"], out["eager"]):
        assert_close(a, e, name=name)


@pytest.mark.slow
def test_custom_op_registration_and_compile(triton_interpreter):
    """parazoo::ssd_scan passes torch.library.opcheck and traces under torch.compile (fullgraph)."""
    from parazoo.ops.ssd.triton_op import _ssd_scan_op

    ins = make_inputs(1, 5, 2, 3, 1, 4, dtype=torch.float32, D="H", z=True)
    leaves = [ins[k].clone().requires_grad_(True) for k in ("x", "dt", "A", "B", "C", "D", "z")]
    torch.library.opcheck(_ssd_scan_op, (*leaves, None, None, None, 16, True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    f = torch.compile(lambda *a: ssd_scan(*a[:5], 16, D=a[5], z=a[6], backend="triton"), backend="aot_eager",
                      fullgraph=True)
    y = f(*leaves)
    y.sum().backward()
    assert_close(y, ssd_scan(*[t.detach() for t in leaves[:5]], 16, D=leaves[5].detach(), z=leaves[6].detach(),
                             backend="reference"), name="compiled y")
    assert all(t.grad is not None for t in leaves)
