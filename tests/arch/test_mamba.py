"""Mamba-1 mixer: mamba_ssm's parameter names/shapes (a state_dict loads strictly), output and
gradients equal the block written here straight from ANCHORS.md's equations, decoding equals the
full forward, upstream initialisation. The shared contract is tests/arch/test_mixer_contract.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from parazoo.arch import MIXERS, LanguageModel, ModelConfig
from parazoo.ops.testing import assert_close, assert_grads_match, run_in_chunks

# mamba_ssm.modules.mamba_simple.Mamba(d_model=64) (d_state 16, d_conv 4, expand 2, dt_rank 4),
# names and shapes written down from the upstream module definition.
UPSTREAM_64 = {
    "in_proj.weight": (256, 64),
    "conv1d.weight": (128, 1, 4),
    "conv1d.bias": (128,),
    "x_proj.weight": (4 + 32, 128),
    "dt_proj.weight": (128, 4),
    "dt_proj.bias": (128,),
    "A_log": (128, 16),
    "D": (128,),
    "out_proj.weight": (64, 128),
}


def upstream_like_state_dict(seed=0, dtype=torch.float64):
    """Random weights in upstream's layout, scaled like a trained block (not our init)."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g, dtype=dtype) * 0.3 for k, s in UPSTREAM_64.items()}
    sd["A_log"] = torch.log(torch.rand(128, 16, generator=g, dtype=dtype) * 4 + 0.5)
    sd["dt_proj.bias"] = torch.rand(128, generator=g, dtype=dtype) * 2 - 4
    return sd


def mamba_from_equations(sd, u):
    """ANCHORS.md's Mamba block, token by token (float64): in_proj -> x | z; causal depthwise conv
    (width 4, bias) -> SiLU; x_proj -> dt | B | C; dt = softplus(dt_proj(dt));
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t; y_t = C_t . h_t + D x_t; out_proj(y * SiLU(z))."""
    Bsz, T, _ = u.shape
    di, N = sd["A_log"].shape
    W = sd["conv1d.weight"].shape[-1]
    R = sd["dt_proj.weight"].shape[1]
    xz = u @ sd["in_proj.weight"].T
    x, z = xz[..., :di], xz[..., di:]                                       # (B, T, d_inner)
    xc = torch.zeros_like(x)
    for t in range(T):                                                      # out_t = b + sum_k w_k x_{t-W+1+k}
        acc = sd["conv1d.bias"].expand(Bsz, di).clone()
        for k in range(W):
            s = t - (W - 1) + k
            if s >= 0:
                acc = acc + sd["conv1d.weight"][:, 0, k] * x[:, s]
        xc[:, t] = F.silu(acc)
    dbc = xc @ sd["x_proj.weight"].T
    dt = F.softplus(dbc[..., :R] @ sd["dt_proj.weight"].T + sd["dt_proj.bias"])  # (B, T, d_inner)
    Bm, Cm = dbc[..., R:R + N], dbc[..., R + N:]                            # (B, T, N)
    A = -torch.exp(sd["A_log"])                                             # (d_inner, N)
    h = u.new_zeros(Bsz, di, N)
    ys = []
    for t in range(T):
        h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * Bm[:, t, None, :] * xc[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + sd["D"] * xc[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y @ sd["out_proj.weight"].T


def loaded(dtype=torch.float64):
    m = MIXERS["mamba"](64).to(dtype)
    m.load_state_dict(upstream_like_state_dict(dtype=dtype), strict=True)
    return m


def test_parameter_names_and_shapes_match_upstream():
    m = MIXERS["mamba"](64)
    assert {n: tuple(p.shape) for n, p in m.state_dict().items()} == UPSTREAM_64
    assert (m.d_inner, m.dt_rank, m.d_state, m.d_conv) == (128, 4, 16, 4)


def test_upstream_state_dict_loads_and_matches_equations():
    m = loaded()
    u = torch.randn(2, 11, 64, dtype=torch.float64)
    y, _ = m(u)
    assert_close(y, mamba_from_equations(upstream_like_state_dict(), u), name="mamba vs equations")


def test_gradients_match_equations():
    u = torch.randn(2, 9, 64, dtype=torch.float64)
    assert_grads_match(loaded(), mamba_from_equations, upstream_like_state_dict(), u)


@pytest.mark.parametrize("splits", [[1] * 10, [3, 1, 6], [4, 6]])
def test_decoding_and_chunks_equal_full_forward(splits):
    m = loaded()
    u = torch.randn(2, 10, 64, dtype=torch.float64)
    y, s_full = m(u)
    yc, s = run_in_chunks(m, u, splits)
    assert_close(yc, y, name=f"chunks {splits}")
    assert_close(s["ssm_state"], s_full["ssm_state"], name="ssm_state")
    assert_close(s["conv_state"], s_full["conv_state"], name="conv_state")
    assert_close(s_full["conv_state"], (u @ m.in_proj.weight.T)[:, -4:, :128].transpose(1, 2), name="conv_state = last inputs")


def test_chunk_from_a_state_is_one_scan_with_gradients_of_the_full_forward(monkeypatch):
    """A multi-token chunk continues from the state with one selective_scan call (never token by
    token), and gradients through chunked continuation (float64) equal the full forward's."""
    import parazoo.ops as ops

    def no_steps(*a, **k):
        raise AssertionError("a multi-token chunk must not step token by token")

    monkeypatch.setattr(ops, "selective_state_update", no_steps)
    m = loaded()
    u = torch.randn(2, 11, 64, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 11, 64, dtype=torch.float64)
    y, _ = m(u)
    full = torch.autograd.grad((y * g).sum(), [u, *m.parameters()])
    yc, _ = run_in_chunks(m, u, [4, 2, 5])
    assert_close(yc, y, name="chunks [4, 2, 5]")
    chunked = torch.autograd.grad((yc * g).sum(), [u, *m.parameters()])
    for (name, _), a, e in zip([("u", u), *m.named_parameters()], chunked, full):
        assert_close(a, e, name=f"d{name} chunked vs full")


def test_state_is_not_modified_in_place():
    m = loaded()
    u = torch.randn(1, 6, 64, dtype=torch.float64)
    _, s = m(u[:, :5])
    before = {k: v.clone() for k, v in s.items()}
    m(u[:, 5:], s)
    m(u[:, 5:], s)
    for k in s:
        assert torch.equal(s[k], before[k]), k


def test_upstream_init():
    torch.manual_seed(0)
    m = MIXERS["mamba"](768)
    assert m.dt_rank == 48 and m.d_inner == 1536
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(1536, 1))
    assert torch.equal(m.D, torch.ones(1536))
    assert m.dt_proj.weight.abs().max() <= 48 ** -0.5
    dt = F.softplus(m.dt_proj.bias.double())
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 0.1 * (1 + 1e-6)
    # log-uniform: log dt is uniform on [log 1e-3, log 0.1], mean at log 1e-2
    assert abs(dt.log().mean().item() - math.log(1e-2)) < 0.15
    for p in (m.A_log, m.D):
        assert getattr(p, "_no_weight_decay", False)
    assert not getattr(m.in_proj.weight, "_no_weight_decay", False)
    from parazoo.training.optim import param_groups

    decay, no_decay = param_groups(m, 0.1)
    assert any(p is m.A_log for p in no_decay["params"]) and not any(p is m.A_log for p in decay["params"])


def test_language_model_keeps_mamba_init_and_decodes():
    cfg = ModelConfig.from_name("mamba-tiny")
    model = LanguageModel(cfg)
    mix = model.blocks[0].mixer
    N = mix.d_state
    assert torch.equal(mix.A_log, torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(mix.d_inner, 1))
    assert F.softplus(mix.dt_proj.bias).min() >= 1e-3 * (1 - 1e-6)
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    logits, _ = model(ids)
    _, st = model(ids[:, :6])
    l2, _ = model(ids[:, 6:], st)
    assert_close(l2[:, 0], logits[:, -1], name="LM decode step")


def test_presets():
    c = ModelConfig.from_name("mamba-130m")
    assert (c.d_model, c.n_layers, c.mlp, c.vocab_size, c.tie_embeddings) == (768, 24, "none", 50280, True)
    m = MIXERS["mamba"](768)
    per_layer = sum(p.numel() for p in m.parameters())
    total = 24 * (per_layer + 768) + 50280 * 768 + 768                    # mixers + norms + tied embedding + final norm
    assert 125e6 < total < 135e6, total
