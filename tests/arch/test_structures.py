"""Structures (ladder, kraken, ParScale) against direct implementations of their equations, and
with every registered mixer through the state contract."""
import pytest
import torch

from parazoo.arch import MIXERS, LanguageModel, ModelConfig
from parazoo.ops.testing import assert_close


def cfg(**kw):
    base = dict(vocab_size=40, d_model=32, n_layers=3, mixer="attention", mixer_kwargs={"n_heads": 4})
    base.update(kw)
    return ModelConfig(**base)


def build(c, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return LanguageModel(c).to(dtype).eval()


IDS = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(3))


def modules_of(model):
    """f_1 .. f_M as callables on the stream (mixer branch, then MLP branch, per layer)."""
    fs = []
    for blk in model.trunk.blocks:
        fs.append(lambda x, b=blk: b.mix(x)[0])
        if blk.mlp is not None:
            fs.append(lambda x, b=blk: b.ffn(x))
    return fs


def test_ladder_with_no_laddered_layers_is_exactly_standard():
    std = build(cfg())
    lad = build(cfg(structure="ladder", ladder_layers=[]))
    assert torch.equal(std(IDS)[0], lad(IDS)[0])


def test_ladder_matches_its_equation():
    # h_i = h_{i-1} + f_i(h_{i-2}), h_{-1} = h_0 = embedding; final norm sees h_M
    m = build(cfg(structure="ladder"))
    with torch.no_grad():
        h0 = m.embed_tokens(IDS, 0)
        hs = [h0, h0]  # h_{-1}, h_0
        for f in modules_of(m):
            hs.append(hs[-1] + f(hs[-2]))
        expected = m.logits(hs[-1])
    assert_close(m(IDS)[0], expected)


def test_ladder_last_k_layers():
    m = build(cfg(structure="ladder", ladder_layers=1, n_layers=3))
    assert m.trunk.laddered == frozenset({2})
    with torch.no_grad():
        h = m.embed_tokens(IDS, 0)
        fs = modules_of(m)  # 6 modules; the last layer's two (indices 4, 5) are laddered
        prev = h
        for i, f in enumerate(fs):
            if i >= 4:
                new = h + f(prev)
            else:
                new = h + f(h)
            prev, h = h, new
        expected = m.logits(h)
    assert_close(m(IDS)[0], expected)
    assert not torch.allclose(m(IDS)[0], build(cfg(n_layers=3))(IDS)[0])


def test_kraken_matches_its_equation():
    c = cfg(structure="kraken", kraken_splits=3)
    m = build(c)
    with torch.no_grad():
        h0 = m.embed_tokens(IDS, 0)
        layers = m.trunk.layers
        xs = [blk(h0)[0] for blk in layers[0]]  # layer 1: no exchange
        for layer in layers[1:]:
            new = []
            for i, blk in enumerate(layer):
                a = xs[i] + blk.mix(xs[i])[0]
                u = a + sum(xs[j] for j in range(len(xs)) if j != i)
                new.append(a + blk.ffn(u))
            xs = new
        expected = m.logits(m.trunk.out_proj(torch.cat(xs, -1)))
    assert_close(m(IDS)[0], expected)


def test_kraken_rejects_mixer_only_blocks():
    with pytest.raises(ValueError, match="kraken"):
        cfg(structure="kraken", mlp="none")


def test_parscale_p1_is_the_base_model():
    assert torch.equal(build(cfg())(IDS)[0], build(cfg(parscale_n=1))(IDS)[0])


def test_parscale_aggregation_equation():
    m = build(cfg(parscale_n=3, parscale_prefix=4))
    P, B = 3, IDS.shape[0]
    with torch.no_grad():
        h = m.embed_tokens(IDS, 0)
        outs = []
        for p in range(P):  # each stream alone: its own learned prefix, shared weights
            st = m.parscale.initial_states(1, torch.float64)
            sp = [{k: (v[p:p + 1].expand(B, *v.shape[1:]) if torch.is_tensor(v) else v) for k, v in s.items()}
                  for s in [dict(s) for s in st]]
            # initial_states(1) has P rows (one per stream): take row p for every batch element
            hp, _ = m.trunk(h, m.trunk.unflatten_state(sp))
            outs.append(m.norm_f(hp))
        cat = torch.cat(outs, -1)
        w = torch.softmax(m.parscale.aggregator(cat), -1) * (1 - 0.01) + 0.01 / P
        y = sum(w[..., p:p + 1] * outs[p] for p in range(P))
        expected = torch.nn.functional.linear(y, m.embed.weight)
    assert_close(m(IDS)[0], expected)
    assert sum(p.numel() for p in m.parscale.prefix.parameters()) == 3 * 2 * (P * 4 * 4 * 8)  # layers*(k,v)*(P,H,n,D)


def test_parscale_over_ladder_composes_and_decodes():
    m = build(cfg(structure="ladder", parscale_n=2, parscale_prefix=3))
    full, _ = m(IDS)
    a, s = m(IDS[:, :4])
    b, _ = m(IDS[:, 4:], s)
    assert_close(torch.cat([a, b], 1), full)
    out = m.generate(IDS[:, :3], 5, temperature=0)
    seq = IDS[:, :3]
    for _ in range(5):
        seq = torch.cat([seq, m(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


STRUCTURES = {
    "ladder": dict(structure="ladder"),
    "kraken": dict(structure="kraken", kraken_splits=2),
    "parscale": dict(parscale_n=2, parscale_prefix=2),
}


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_every_structure_with_every_mixer(structure, mixer):
    c = ModelConfig(vocab_size=40, d_model=64, n_layers=2, mixer=mixer, **STRUCTURES[structure])
    m = build(c)
    ids = IDS[:, :7]
    full, _ = m(ids)
    a, s = m(ids[:, :3])
    b, s = m(ids[:, 3:5], s)
    c_, _ = m(ids[:, 5:], s)
    assert_close(torch.cat([a, b, c_], 1), full, name=f"{structure}+{mixer} continuation")
    m.train()
    logits, _ = m(ids)
    logits.float().square().mean().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{structure}+{mixer}: {n} has no/non-finite grad"
