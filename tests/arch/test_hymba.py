"""Hymba mixer and meta tokens: per-branch normalisation makes the output invariant to a
rescaling of either branch's raw output; the mixer equals its formula; meta tokens are prepended
once, carried by the state, produce no logits, and generation / continuation equal the full
forward."""
import pytest
import torch

from parazoo.arch import MIXERS, LanguageModel, ModelConfig
from parazoo.ops.testing import assert_close


def make(**kw):
    torch.manual_seed(0)
    return MIXERS["hymba"](32, n_heads=4, n_kv_heads=2, **kw).double().eval()


def x_in(B=2, T=9):
    return torch.randn(B, T, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.mark.parametrize("branch", ["ssm", "attn"])
def test_branch_rescaling_invariance(branch):
    m = make(norm_eps=1e-30)
    with torch.no_grad():  # distinct per-channel scales, so that the two norms are not interchangeable
        m.norm_attn.weight.uniform_(0.5, 1.5)
        m.norm_ssm.weight.uniform_(0.5, 1.5)
    x = x_in()
    y, _ = m(x)
    factor = {"value": 3.0}
    h = getattr(m, branch).register_forward_hook(lambda mod, inp, out: (out[0] * factor["value"], out[1]))
    try:
        y3, _ = m(x)
        assert_close(y3, y, name=f"{branch} branch scaled by 3")
        factor["value"] = 0.0  # the hook does act: removing the branch changes the output
        y0, _ = m(x)
        assert (y0 - y).abs().max() > 1e-3
    finally:
        h.remove()


def test_equals_formula():
    m = make()
    x = x_in()
    seen = {}
    h1 = m.attn.register_forward_hook(lambda mod, i, o: seen.__setitem__("a", o[0]))
    h2 = m.ssm.register_forward_hook(lambda mod, i, o: seen.__setitem__("s", o[0]))
    y, _ = m(x)
    h1.remove(), h2.remove()
    a, s = seen["a"], seen["s"]
    assert a.shape == s.shape == (2, 9, m.d_inner)

    def rms(v, w, eps):
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    ref = ((rms(a, m.norm_attn.weight, m.norm_attn.eps) + rms(s, m.norm_ssm.weight, m.norm_ssm.eps)) / 2) @ m.out_proj.weight.T
    assert_close(y, ref, name="hymba vs out_proj((norm1(attn) + norm2(ssm)) / 2)")


def test_bad_head_count():
    with pytest.raises(ValueError, match="n_heads"):
        MIXERS["hymba"](32, n_heads=5)


def tiny_model(n_meta=3):
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("hymba-tiny", vocab_size=61, n_meta_tokens=n_meta)
    return LanguageModel(cfg).double().eval()


def ids_in(B=2, T=8):
    return torch.randint(0, 61, (B, T), generator=torch.Generator().manual_seed(4))


def test_meta_tokens_logits_and_continuation():
    m = tiny_model()
    ids = ids_in()
    logits, state = m(ids)
    assert logits.shape == (2, 8, 61) and state.pos == 8
    kv = state.layers[0]["k"]
    assert kv.shape[2] == 3 + 8, "the meta tokens are part of the state (KV cache)"
    la, s = m(ids[:, :5])
    lb, _ = m(ids[:, 5:], s)
    assert_close(torch.cat([la, lb], 1), logits, name="prefill 5 + continue 3 vs full")
    s = m.init_state(2)
    steps = []
    for t in range(8):
        lt, s = m(ids[:, t:t + 1], s)
        steps.append(lt)
    assert_close(torch.cat(steps, 1), logits, name="token by token from init_state vs full")
    with torch.no_grad():  # the meta tokens matter
        m.meta_tokens.add_(1.0)
    assert (m(ids)[0] - logits).abs().max() > 1e-3


def test_meta_tokens_generation_equals_full_forward():
    m = tiny_model()
    ids = ids_in(B=1, T=4)
    out = m.generate(ids, 4, temperature=0)
    seq = ids
    for _ in range(4):  # greedy by full forwards (meta tokens prepended every time)
        nxt = m(seq)[0][:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_meta_tokens_config_validation_and_params():
    with pytest.raises(ValueError, match="n_meta_tokens"):
        ModelConfig.from_name("hymba-tiny", n_meta_tokens=-1)
    with_meta = tiny_model(3).num_parameters()
    without = tiny_model(0).num_parameters()
    assert with_meta - without == 3 * 64
    assert tiny_model(0).meta_tokens is None
