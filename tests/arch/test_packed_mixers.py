"""Packed sequences through the mamba and mamba2 mixers (``seq_idx`` / ``cu_seqlens`` keywords of
forward): every sequence equals the mixer run on it alone (output, returned state, every gradient).
With seq_idx the returned state continues a row's last sequence and a state applies to a row's
sequence 0; with cu_seqlens states are per sequence, in and out."""
import pytest
import torch

from parazoo.arch import MIXERS
from parazoo.ops.testing import assert_close

D_MODEL = 32
KW = {"mamba": dict(d_state=5), "mamba2": dict(d_state=8, headdim=8, ngroups=2, chunk_size=4)}
# row 0: three sequences from index 0 (one of length 1); row 1: one sequence of index 3; row 2: two sequences,
# the last one shorter than the conv window
SEQ_IDX = torch.tensor([[0] * 6 + [1] + [2] * 6,
                        [3] * 13,
                        [0] * 11 + [5] * 2])
# shorter than the conv window: the returned window mixes the incoming state with new tokens, only for row 0
SHORT = torch.tensor([[0, 0], [1, 1], [0, 1]])


def _mixer(name, seed=0):
    torch.manual_seed(seed)
    m = MIXERS[name](D_MODEL, **KW[name]).double()
    with torch.no_grad():                       # away from the init's zeros and ones, so every gradient can fail
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _x(B, T, seed=1):
    return torch.randn(B, T, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cuts(row):
    T = len(row)
    cuts = [0] + [t for t in range(1, T) if row[t] != row[t - 1]] + [T]
    return list(zip(cuts[:-1], cuts[1:]))


def _row_state(state, r):
    return None if state is None else {k: v[r:r + 1] for k, v in state.items()}


def _state(name, B, seed=2):
    """A state reached by running the mixer on random tokens (so both parts are nonzero)."""
    with torch.no_grad():
        return _mixer(name)(_x(B, 5, seed))[1]


@pytest.mark.parametrize("seq_idx", [SEQ_IDX, SHORT], ids=["T13", "T2"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_packed_equals_each_sequence_separately(name, with_state, seq_idx):
    m = _mixer(name)
    x = _x(*seq_idx.shape).requires_grad_()
    state = _state(name, 3) if with_state else None
    y, st = m(x, state, seq_idx=seq_idx)
    g = torch.Generator().manual_seed(3)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gs = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in st.items()}
    leaves = [x, *m.parameters()]
    got = torch.autograd.grad((y * gy).sum() + sum((st[k] * gs[k]).sum() for k in st), leaves)
    sep_loss = 0
    for r, row in enumerate(seq_idx.tolist()):
        for s, e in _cuts(row):
            init = _row_state(state, r) if s == 0 and row[0] == 0 else None
            y_i, st_i = m(x[r:r + 1, s:e], init)
            assert_close(y[r:r + 1, s:e], y_i, name=f"{name}: y of row {r}, tokens {s}..{e}")
            sep_loss = sep_loss + (y_i * gy[r:r + 1, s:e]).sum()
        for k in st:                                             # st_i: the row's last sequence's state
            assert_close(st[k][r:r + 1], st_i[k], name=f"{name}: state[{k!r}] of row {r}")
            sep_loss = sep_loss + (st_i[k] * gs[k][r:r + 1]).sum()
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for n, a, e in zip(names, got, torch.autograd.grad(sep_loss, leaves)):
        assert e.abs().max() > 0, f"{name}: gradient of {n} is identically zero: the check could not fail"
        assert_close(a, e, name=f"{name}: d{n} packed vs separate")


# five packed documents: one shorter than the conv window (2), an empty one, one of a single token
CU = torch.tensor([0, 4, 4, 10, 12, 13], dtype=torch.int32)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_cu_seqlens_states_are_per_sequence(name, with_state):
    """cu_seqlens: sequence i continues state[i] and returns its own state (an empty one returns its input
    state); y, every state and every gradient (the input states' too) equal each document run alone."""
    m = _mixer(name)
    n = CU.numel() - 1
    x = _x(1, int(CU[-1])).requires_grad_()
    state = {k: v.requires_grad_() for k, v in _state(name, n).items()} if with_state else None
    y, st = m(x, state, cu_seqlens=CU)
    assert all(v.shape[0] == n for v in st.values())
    g = torch.Generator().manual_seed(3)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gs = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in st.items()}
    leaves = [x, *m.parameters(), *(state.values() if with_state else ())]
    got = torch.autograd.grad((y * gy).sum() + sum((st[k] * gs[k]).sum() for k in st), leaves)
    sep_loss = 0
    for i, (s, e) in enumerate(zip(CU[:-1].tolist(), CU[1:].tolist())):
        init = _row_state(state, i)
        if e == s:                                               # no token: the state passes through
            st_i = init if with_state else {k: torch.zeros_like(v[:1]) for k, v in st.items()}
        else:
            y_i, st_i = m(x[:, s:e], init)
            assert_close(y[:, s:e], y_i, name=f"{name}: y of sequence {i}")
            sep_loss = sep_loss + (y_i * gy[:, s:e]).sum()
        for k in st:
            assert_close(st[k][i:i + 1], st_i[k], name=f"{name}: state[{k!r}] of sequence {i}")
            sep_loss = sep_loss + (st_i[k] * gs[k][i:i + 1]).sum()
    names = ["x"] + [p for p, _ in m.named_parameters()] + ([f"state[{k!r}]" for k in state] if with_state else [])
    for nm, a, e in zip(names, got, torch.autograd.grad(sep_loss, leaves)):
        assert e.abs().max() > 0, f"{name}: gradient of {nm} is identically zero: the check could not fail"
        assert_close(a, e, name=f"{name}: d{nm} packed vs separate")


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_decoding_every_document_after_a_packed_prefill(name):
    """A packed prefill of documents (from their own states) leaves a state per document; decoding them as one
    batch equals each document prefilled and decoded alone."""
    m = _mixer(name)
    n = CU.numel() - 1
    x, nxt = _x(1, int(CU[-1])), _x(n, 3, seed=4)
    state0 = _state(name, n)
    with torch.no_grad():
        _, st = m(x, state0, cu_seqlens=CU)
        outs = []
        for t in range(3):
            out, st = m(nxt[:, t:t + 1], st)
            outs.append(out)
        got = torch.cat(outs, 1)                                 # (n, 3, d)
        for i, (s, e) in enumerate(zip(CU[:-1].tolist(), CU[1:].tolist())):
            want, _ = m(torch.cat([x[:, s:e], nxt[i:i + 1]], dim=1), _row_state(state0, i))
            assert_close(got[i:i + 1], want[:, e - s:], name=f"{name}: decoding document {i}")


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_boundaries_cut_and_one_sequence_is_the_plain_call(name):
    """Tests that can fail: one index per row is the plain forward; a boundary changes what follows it."""
    m = _mixer(name)
    x = _x(3, 13)
    y, st = m(x)
    y_same, st_same = m(x, seq_idx=torch.full((3, 13), 7))
    assert_close(y_same, y, name="y, one sequence per row")
    for k in st:
        assert_close(st_same[k], st[k], name=f"state[{k!r}], one sequence per row")
    y_cut, _ = m(x, seq_idx=SEQ_IDX)
    assert_close(y_cut[0, :6], y[0, :6], name="y before the first boundary")
    assert (y_cut[0, 6:9] - y[0, 6:9]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
@pytest.mark.parametrize("kwargs,match", [
    (dict(seq_idx=torch.zeros(3, 12, dtype=torch.int64)), r"'seq_idx'.*\(3, 13\)"),
    (dict(seq_idx=torch.zeros(3, 13)), "'seq_idx'.*integer"),
    (dict(seq_idx=SEQ_IDX.flip(1)), "'seq_idx'.*non-decreasing"),
    (dict(cu_seqlens=torch.tensor([0, 13])), "batch size 1"),
    (dict(seq_idx=SEQ_IDX, cu_seqlens=torch.tensor([0, 13])), "'seq_idx' or as 'cu_seqlens'"),
])
def test_bad_packing_raises_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _mixer(name)(_x(3, 13), **kwargs)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_cu_seqlens_state_of_another_size_is_refused(name):
    """One state per packed sequence: a state with one row per batch row is refused, naming n_seqs."""
    with pytest.raises(ValueError, match=r"batch size 1, but cu_seqlens holds n_seqs = 5"):
        _mixer(name)(_x(1, 13), _state(name, 1), cu_seqlens=CU)
