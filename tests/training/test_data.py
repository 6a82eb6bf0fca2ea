"""Data modules: task definitions checked example by example, determinism, packing, resume."""
import numpy as np
import pytest
import torch

from parazoo.training.data import MQAR, InductionHeads, SelectiveCopying, TextData
from parazoo.training.data.base import ResumableLoader, SkippingSampler, TensorPairs
from parazoo.training.data.mqar import mqar_examples


def _mqar_check_example(x, y, K, V):
    T = x.shape[0]
    s = np.concatenate([x, [0]])  # s[T] is never needed except as a value, recovered from y below
    keys, values = x[0:2 * K:2], x[1:2 * K:2]
    assert ((1 <= keys) & (keys < V // 2)).all() and len(set(keys)) == K
    assert ((V // 2 <= values) & (values < V)).all() and len(set(values)) == K
    kv = dict(zip(keys.tolist(), values.tolist()))
    scored = np.nonzero(y != -100)[0]
    assert len(scored) == K
    assert (scored >= 2 * K).all() and ((scored - 2 * K) % 2 == 0).all()
    assert sorted(x[scored].tolist()) == sorted(keys.tolist())       # every key is queried once
    for p in scored:
        assert y[p] == kv[int(x[p])]                                   # label = the key's value
        if p + 1 < T:
            assert x[p + 1] == y[p]                                    # value follows the query
    rest = np.ones(T, bool)
    rest[:2 * K] = False
    rest[scored] = False
    rest[np.minimum(scored + 1, T - 1)[scored + 1 < T]] = False
    assert (s[:T][rest] == 0).all()


def test_mqar_examples_follow_zoology_definition():
    rng = np.random.default_rng(0)
    for T, K, V in [(16, 4, 32), (64, 4, 8192), (33, 8, 64), (15, 4, 20)]:
        x, y = mqar_examples(50, T, K, V, 0.01, rng)
        assert x.shape == y.shape == (50, T)
        for i in range(50):
            _mqar_check_example(x[i], y[i], K, V)


def test_mqar_query_gaps_follow_power_law():
    # p(slot j) ∝ (j+1)^(a-1): with a = 0.01 the first slot is chosen far more often than the last.
    x, y = mqar_examples(4000, 64, 1, 64, 0.01, np.random.default_rng(1))
    slot = (np.argmax(y != -100, axis=1) - 2) // 2
    counts = np.bincount(slot, minlength=31)
    p = np.arange(1, 32, dtype=float) ** (0.01 - 1)
    p /= p.sum()
    assert counts[0] / 4000 == pytest.approx(p[0], abs=0.03)
    assert counts[:5].sum() > counts[-5:].sum() * 4


def test_mqar_datamodule_slices_padding_and_determinism():
    kw = dict(vocab_size=64, train_configs=[{"seq_len": 16, "num_kv_pairs": 2}, {"seq_len": 32, "num_kv_pairs": 4}],
              test_configs=[{"seq_len": 32, "num_kv_pairs": 4}, {"seq_len": 64, "num_kv_pairs": 8, "num_examples": 7}],
              num_train_examples=10, num_test_examples=5)
    a, b, c = MQAR(**kw), MQAR(**kw), MQAR(**kw, seed=1)
    for d in (a, b, c):
        d.setup()
    assert a.val_names == ["kv4_len32", "kv8_len64"] and len(a.val_sets["kv8_len64"]) == 7
    assert a.max_seq_len == 64 and a.vocab_size == 64
    assert torch.equal(a.train_set.input_ids, b.train_set.input_ids)
    assert not torch.equal(a.train_set.input_ids, c.train_set.input_ids)
    short = a.train_set[0]                                   # a (16, 2) example padded to 32
    assert (short["input_ids"][16:] == 0).all() and (short["labels"][16:] == -100).all()
    assert (short["labels"] != -100).sum() == 2


@pytest.mark.parametrize("kw, match", [
    (dict(train_configs=[{"seq_len": 8, "num_kv_pairs": 4}]), "at least 4\\*num_kv_pairs - 1"),
    (dict(train_configs=[{"seq_len": 64, "num_kv_pair": 4}]), "unknown keys \\['num_kv_pair'\\]"),
    (dict(test_configs=[]), "non-empty list"),
    (dict(vocab_size=8, train_configs=[{"seq_len": 64, "num_kv_pairs": 4}]), "exceeds the distinct keys"),
    (dict(batch_size=0), "batch_size"),
])
def test_mqar_bad_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        MQAR(**kw)


def test_selective_copying_examples():
    d = SelectiveCopying(train_configs=[{"seq_len": 40}], test_configs=[{"seq_len": 80}], num_train_examples=20,
                         num_test_examples=3)
    d.setup()
    for i in range(20):
        x, y = d.train_set[i]["input_ids"], d.train_set[i]["labels"]
        region = x[:24]
        data = region[region != 0]
        assert len(data) == 16 and ((1 <= data) & (data <= 14)).all()
        assert (x[24:] == 15).all() and (y[:24] == -100).all()
        assert torch.equal(y[24:], data)                      # copy in order after the marker
    assert d.val_names == ["len80"] and d.max_seq_len == 80


def test_induction_heads_examples():
    d = InductionHeads(train_configs=[{"seq_len": 12}], num_train_examples=200, num_test_examples=2)
    d.setup()
    assert d.val_names == ["len256", "len512", "len1024"]
    for i in range(200):
        x, y = d.train_set[i]["input_ids"], d.train_set[i]["labels"]
        trig = torch.nonzero(x == 15).flatten()
        assert len(trig) == 2 and trig[1] == 11 and trig[0] <= 9
        assert (y[:-1] == -100).all() and y[-1] == x[trig[0] + 1]


def test_text_packing_split_and_errors(tmp_path):
    f = tmp_path / "a.txt"
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    f.write_text(text)
    d = TextData(paths=[str(f)], seq_len=10, val_fraction=0.1, batch_size=4)
    d.setup()
    tr, va = d.train_set, d.val_sets["text"]
    assert len(tr) == (900 - 1) // 10 and len(va) == (100 - 1) // 10
    b = tr[3]
    assert d.decode(b["input_ids"]) == text[30:40] and d.decode(b["labels"]) == text[31:41]
    assert d.decode(va[0]["input_ids"]) == text[900:910]
    assert d.bytes_per_token == 1.0 and d.vocab_size == 256 and d.max_seq_len == 10
    with pytest.raises(ValueError, match="does not exist"):
        TextData(paths=[str(tmp_path / "missing.txt")])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        TextData(paths=str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="too few"):
        TextData(paths=[str(f)], seq_len=600).setup()
    with pytest.raises(ValueError, match="tokenizer"):
        TextData(paths=[str(f)], tokenizer="gpt2")


def test_default_corpus_is_deterministic_python_source():
    a, b = TextData(max_bytes=50_000, seq_len=64), TextData(max_bytes=50_000, seq_len=64)
    assert a.read_bytes() == b.read_bytes() and len(a.read_bytes()) == 50_000
    a.setup()
    assert len(a.train_set) > 100


def test_hf_dataset_built_locally(tmp_path):
    import datasets  # a dev dependency: the test must run (and can fail) in CI, never skip
    lines = [f"line {i}: to be or not to be" for i in range(200)]
    datasets.Dataset.from_dict({"text": lines}).save_to_disk(str(tmp_path / "ds"))
    d = TextData(hf_dataset=str(tmp_path / "ds"), seq_len=16)
    assert d.read_bytes() == ("\n".join(lines) + "\n").encode()
    # a DatasetDict picks hf_split; a missing text column is a clear error naming it
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": lines[:5]}),
                          "test": datasets.Dataset.from_dict({"body": lines[5:7]})}).save_to_disk(str(tmp_path / "dd"))
    d = TextData(hf_dataset=str(tmp_path / "dd"), hf_split="test", hf_text_field="body", seq_len=4)
    assert d.read_bytes() == ("\n".join(lines[5:7]) + "\n").encode()
    with pytest.raises(ValueError, match="no column 'text'"):
        TextData(hf_dataset=str(tmp_path / "dd"), seq_len=4).read_bytes()


def test_resumable_loader_continues_mid_epoch():
    ds = TensorPairs(torch.arange(40).view(20, 2), torch.arange(40).view(20, 2))
    full = [b["input_ids"][:, 0].tolist() for b in ResumableLoader(ds, 3, SkippingSampler(ds, 1, 0, True, 7))]
    ld = ResumableLoader(ds, 3, SkippingSampler(ds, 1, 0, True, 7))
    it = iter(ld)
    first = [next(it)["input_ids"][:, 0].tolist() for _ in range(2)]
    state = ld.state_dict()
    assert state == {"epoch": 0, "batches_consumed": 2}
    ld2 = ResumableLoader(ds, 3, SkippingSampler(ds, 1, 0, True, 7))
    ld2.load_state_dict(state)
    assert len(ld2) == len(full)                                      # Lightning counts the full epoch
    rest = [b["input_ids"][:, 0].tolist() for b in ld2]
    assert first + rest == full and len(full) == 6
    assert [b["input_ids"][:, 0].tolist() for b in ld2] == full      # a second pass starts from the top
    # a position saved in epoch 1 applies once the sampler is in epoch 1, not before
    ld3 = ResumableLoader(ds, 3, SkippingSampler(ds, 1, 0, True, 7))
    ld3.load_state_dict({"epoch": 1, "batches_consumed": 4})
    ld3.sampler.set_epoch(1)
    ref = ResumableLoader(ds, 3, SkippingSampler(ds, 1, 0, True, 7))
    ref.sampler.set_epoch(1)
    ep1 = [b["input_ids"][:, 0].tolist() for b in ref]
    assert ep1 != full and [b["input_ids"][:, 0].tolist() for b in ld3] == ep1[4:]
    assert ld3.state_dict() == {"epoch": 1, "batches_consumed": 6}
    # two ranks see disjoint halves of the same permutation
    r0 = [i for b in ResumableLoader(ds, 2, SkippingSampler(ds, 2, 0, True, 7)) for i in b["input_ids"][:, 0].tolist()]
    r1 = [i for b in ResumableLoader(ds, 2, SkippingSampler(ds, 2, 1, True, 7)) for i in b["input_ids"][:, 0].tolist()]
    assert not set(r0) & set(r1) and len(r0) == len(r1) == 10
