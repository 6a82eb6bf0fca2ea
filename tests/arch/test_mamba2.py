"""Mamba-2 mixer: mamba_ssm's Mamba2 parameter names/shapes (a state_dict loads strictly), output
and gradients equal the block written here from the Mamba-2 paper's equations (ANCHORS.md),
decoding and chunked continuation equal the full forward, upstream initialisation.
The shared contract is tests/arch/test_mixer_contract.py."""
import pytest
import torch
import torch.nn.functional as F

from parazoo.arch import MIXERS, LanguageModel, ModelConfig
from parazoo.ops.testing import assert_close, assert_grads_match, run_in_chunks

# mamba_ssm.modules.mamba2.Mamba2(d_model=64, d_state=16, headdim=16, ngroups=2): d_inner 128,
# nheads 8, conv_dim = d_inner + 2 G N = 192, in_proj width 2 d_inner + 2 G N + nheads = 328.
KW = dict(d_state=16, headdim=16, ngroups=2, chunk_size=4)
UPSTREAM_64 = {
    "in_proj.weight": (328, 64),
    "conv1d.weight": (192, 1, 4),
    "conv1d.bias": (192,),
    "dt_bias": (8,),
    "A_log": (8,),
    "D": (8,),
    "norm.weight": (128,),
    "out_proj.weight": (64, 128),
}
# Mamba2(d_model=64) with the paper's defaults (d_state 128, headdim 64, ngroups 1): 2 heads.
UPSTREAM_64_DEFAULTS = {
    "in_proj.weight": (514, 64), "conv1d.weight": (384, 1, 4), "conv1d.bias": (384,), "dt_bias": (2,),
    "A_log": (2,), "D": (2,), "norm.weight": (128,), "out_proj.weight": (64, 128),
}


def upstream_like_state_dict(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g, dtype=dtype) * 0.3 for k, s in UPSTREAM_64.items()}
    sd["A_log"] = torch.log(torch.rand(8, generator=g, dtype=dtype) * 15 + 1)
    sd["dt_bias"] = torch.rand(8, generator=g, dtype=dtype) * 2 - 4
    sd["norm.weight"] = 1 + 0.1 * torch.randn(128, generator=g, dtype=dtype)
    return sd


def mamba2_from_equations(sd, u, d_state=16, headdim=16, ngroups=2, eps=1e-5):
    """z | xBC | dt = in_proj(u); xBC = SiLU(causal depthwise conv(xBC)); x | B | C;
    dt = softplus(dt + dt_bias); h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T; y_t = h_t C_t + D x_t;
    out = out_proj(RMSNorm_groups(y * SiLU(z)) * w)   (token by token, float64)."""
    Bsz, T, _ = u.shape
    H, N, P, G = sd["A_log"].shape[0], d_state, headdim, ngroups
    di = H * P
    W = sd["conv1d.weight"].shape[-1]
    zxbcdt = u @ sd["in_proj.weight"].T
    z, xbc, dt = zxbcdt[..., :di], zxbcdt[..., di:2 * di + 2 * G * N], zxbcdt[..., 2 * di + 2 * G * N:]
    xc = torch.zeros_like(xbc)
    for t in range(T):
        acc = sd["conv1d.bias"].expand(Bsz, -1).clone()
        for k in range(W):
            if t - (W - 1) + k >= 0:
                acc = acc + sd["conv1d.weight"][:, 0, k] * xbc[:, t - (W - 1) + k]
        xc[:, t] = F.silu(acc)
    x = xc[..., :di].reshape(Bsz, T, H, P)
    Bm = xc[..., di:di + G * N].reshape(Bsz, T, G, N)
    Cm = xc[..., di + G * N:].reshape(Bsz, T, G, N)
    dt = F.softplus(dt + sd["dt_bias"])                                     # (B, T, H)
    A = -torch.exp(sd["A_log"])
    Bh = Bm.repeat_interleave(H // G, dim=2)                                # (B, T, H, N): head h reads group h // (H/G)
    Ch = Cm.repeat_interleave(H // G, dim=2)
    h = u.new_zeros(Bsz, H, P, N)
    ys = []
    for t in range(T):
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + \
            (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]  # (B, H, P, N)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]) + sd["D"][:, None] * x[:, t])
    y = torch.stack(ys, 1).reshape(Bsz, T, di) * F.silu(z)                  # gate, then norm (norm_before_gate=False)
    yg = y.view(Bsz, T, G, di // G)
    y = (yg / torch.sqrt(yg.square().mean(-1, keepdim=True) + eps)).reshape(Bsz, T, di) * sd["norm.weight"]
    return y @ sd["out_proj.weight"].T


def loaded(dtype=torch.float64):
    m = MIXERS["mamba2"](64, **KW).to(dtype)
    m.load_state_dict(upstream_like_state_dict(dtype=dtype), strict=True)
    return m


def test_parameter_names_and_shapes_match_upstream():
    assert {n: tuple(p.shape) for n, p in MIXERS["mamba2"](64, **KW).state_dict().items()} == UPSTREAM_64
    m = MIXERS["mamba2"](64)
    assert {n: tuple(p.shape) for n, p in m.state_dict().items()} == UPSTREAM_64_DEFAULTS
    assert (m.d_state, m.headdim, m.ngroups, m.chunk_size, m.d_conv) == (128, 64, 1, 256, 4)


def test_upstream_state_dict_loads_and_matches_equations():
    m = loaded()
    u = torch.randn(2, 11, 64, dtype=torch.float64)
    assert_close(m(u)[0], mamba2_from_equations(upstream_like_state_dict(), u), name="mamba2 vs equations")


def test_gradients_match_equations():
    u = torch.randn(2, 7, 64, dtype=torch.float64)
    assert_grads_match(loaded(), mamba2_from_equations, upstream_like_state_dict(), u)


@pytest.mark.parametrize("splits", [[1] * 10, [3, 1, 6], [5, 5]])
def test_decoding_and_chunks_equal_full_forward(splits):
    m = loaded()
    u = torch.randn(2, 10, 64, dtype=torch.float64)
    y, s_full = m(u)
    yc, s = run_in_chunks(m, u, splits)
    assert_close(yc, y, name=f"chunks {splits}")
    for k in ("ssm_state", "conv_state"):
        assert_close(s[k], s_full[k], name=k)


def test_state_is_not_modified_in_place():
    m = loaded()
    u = torch.randn(1, 6, 64, dtype=torch.float64)
    _, s = m(u[:, :5])
    before = {k: v.clone() for k, v in s.items()}
    m(u[:, 5:], s)
    m(u[:, 4:], s)
    for k in s:
        assert torch.equal(s[k], before[k]), k


def test_upstream_init():
    torch.manual_seed(0)
    m = MIXERS["mamba2"](768)
    assert (m.nheads, m.d_inner) == (24, 1536)
    A = torch.exp(m.A_log)
    assert A.min() >= 1 and A.max() <= 16
    dt = F.softplus(m.dt_bias.double())
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 0.1 * (1 + 1e-6)
    assert torch.equal(m.D, torch.ones(24))
    for p in (m.A_log, m.D, m.dt_bias):
        assert getattr(p, "_no_weight_decay", False)


def test_presets_and_language_model_decode():
    c = ModelConfig.from_name("mamba2-130m")
    assert (c.d_model, c.n_layers, c.mlp, c.mixer_kwargs["d_state"], c.mixer_kwargs["headdim"]) == (768, 24, "none", 128, 64)
    cfg = ModelConfig.from_name("mamba2-tiny")
    model = LanguageModel(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    logits, _ = model(ids)
    _, st = model(ids[:, :6])
    l2, _ = model(ids[:, 6:], st)
    assert_close(l2[:, 0], logits[:, -1], name="LM decode step")
