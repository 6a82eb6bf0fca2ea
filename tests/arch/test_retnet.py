"""RetNet mixer: the three modes agree (chunk sizes 1, 4, 64 and T), with and without an incoming
state, and equal a computation written here straight from the paper's equations (RoPE on
interleaved pairs, gamma_h = 1 - 2^(-5-h), keys scaled by d_k^-1/2, per-head RMSNorm, swish gate).
The shared contract (continuation, decoding, gradients, bad input) is tests/arch/test_mixer_contract.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from parazoo.arch import MIXERS, LanguageModel, ModelConfig
from parazoo.ops.testing import assert_close

D_MODEL, HEADS = 32, 4


def make(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return MIXERS["retnet"](D_MODEL, n_heads=HEADS, **kw).to(dtype)


def x_of(B=2, T=13, dtype=torch.float64, seed=1):
    return torch.randn(B, T, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def paper_msr(m, x, S0=None, pos=0):
    """MSR(X) from the paper's recurrent form, written out here (float64, per token)."""
    B, T, _ = x.shape
    H, K, V = m.n_heads, m.head_k_dim, m.head_v_dim
    theta = 10000.0 ** -torch.linspace(0, 1, K // 2, dtype=torch.float64)                 # (K/2,)

    def rot(u, n):  # u (B, H, K), interleaved pairs (2i, 2i+1) rotate by n * theta_i
        a, b = u[..., 0::2], u[..., 1::2]
        c, s = torch.cos(n * theta), torch.sin(n * theta)
        return torch.stack((a * c - b * s, b * c + a * s), -1).flatten(-2)

    gamma = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(H)], dtype=torch.float64)[None, :, None, None]
    S = torch.zeros(B, H, K, V, dtype=torch.float64) if S0 is None else S0.clone()
    ys = []
    for t in range(T):
        xt = x[:, t]
        q = rot((xt @ m.q_proj.weight.T).view(B, H, K), pos + t)
        k = rot((xt @ m.k_proj.weight.T).view(B, H, K), pos + t) * K ** -0.5
        v = (xt @ m.v_proj.weight.T).view(B, H, V)
        S = gamma * S + k[..., :, None] * v[..., None, :]
        o = torch.einsum("bhk,bhkv->bhv", q, S)                                            # (B, H, V)
        o = o / torch.sqrt(o.square().mean(-1, keepdim=True) + m.g_norm.eps)              # per-head RMSNorm
        g = xt @ m.g_proj.weight.T
        ys.append((o.reshape(B, H * V) * F.silu(g)) @ m.o_proj.weight.T)
    return torch.stack(ys, 1), S * K ** 0.5  # the ops scale q instead of k (fla): S holds unscaled keys


@pytest.mark.parametrize("mode", ["parallel", "chunk", "recurrent"])
def test_each_mode_equals_paper_equations(mode):
    m = make()
    x = x_of()
    y, st = m(x, mode=mode)
    ref, S = paper_msr(m, x)
    assert_close(y, ref, name=f"{mode} vs paper")
    assert_close(st["state"], S, name=f"{mode} final state")
    assert st["pos"] == x.shape[1]


@pytest.mark.parametrize("T,chunk", [(13, 1), (13, 4), (13, 64), (16, 16), (70, 64)])
@pytest.mark.parametrize("with_state", [False, True])
def test_modes_equal(T, chunk, with_state):
    m = make(chunk_size=chunk)
    x = x_of(T=T)
    state = None
    if with_state:
        _, state = m(x_of(T=5, seed=7), mode="recurrent")
    outs = {mode: m(x, state, mode=mode) for mode in ("parallel", "chunk", "recurrent")}
    y_r, s_r = outs["recurrent"]
    for mode in ("parallel", "chunk"):
        assert_close(outs[mode][0], y_r, name=f"{mode} vs recurrent (T={T}, chunk={chunk})")
        assert_close(outs[mode][1]["state"], s_r["state"], name=f"{mode} state")
        assert outs[mode][1]["pos"] == s_r["pos"] == T + (5 if with_state else 0)


def test_continuation_matches_paper_with_rope_offset():
    m = make()
    x = x_of(T=11)
    ya, s = m(x[:, :4])
    yb, s2 = m(x[:, 4:], s, mode="chunk")
    ref, S = paper_msr(m, x)
    assert_close(torch.cat([ya, yb], 1), ref, name="split continuation vs paper")
    assert_close(s2["state"], S, name="final state")


def test_modes_float32_and_gradients_agree():
    m = make(torch.float32, chunk_size=4)
    x = x_of(T=13, dtype=torch.float32).requires_grad_(True)
    grads, ys = {}, {}
    for mode in ("parallel", "chunk", "recurrent"):
        m.zero_grad()
        x.grad = None
        y, _ = m(x, mode=mode)
        y.square().sum().backward()
        ys[mode] = y.detach()
        grads[mode] = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    for mode in ("parallel", "chunk"):
        assert_close(ys[mode], ys["recurrent"], name=f"{mode} fp32 output")
        for a, b in zip(grads[mode], grads["recurrent"]):
            assert_close(a, b, name=f"{mode} fp32 gradient")


def test_defaults_and_parameters():
    m = MIXERS["retnet"](768)
    assert (m.n_heads, m.head_k_dim, m.head_v_dim) == (3, 256, 512)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {"q_proj.weight": (768, 768), "k_proj.weight": (768, 768), "v_proj.weight": (1536, 768),
                      "g_proj.weight": (1536, 768), "o_proj.weight": (768, 1536)}
    assert sum(math.prod(s) for s in shapes.values()) == 8 * 768 ** 2  # paper Sec. 4.1: 8 d^2


def test_mode_auto_and_bad_mode():
    m = make(chunk_size=4)
    assert (m.pick_mode(1), m.pick_mode(4), m.pick_mode(5)) == ("recurrent", "parallel", "chunk")
    with pytest.raises(ValueError, match="mode"):
        m(x_of(), mode="fast")
    with pytest.raises(ValueError, match="state"):
        m(x_of(), {"conv_state": torch.zeros(2, 1)})


def test_presets_build():
    cfg = ModelConfig.from_name("retnet-tiny")
    model = LanguageModel(cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    logits, st = model(ids)
    l2, _ = model(ids[:, -1:], model(ids[:, :-1])[1])
    assert_close(l2[:, 0], logits[:, -1], name="LM decode step")
    for name in ("retnet-small", "retnet-1.3b"):
        assert ModelConfig.from_name(name).mixer == "retnet"
