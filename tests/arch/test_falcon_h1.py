"""Falcon-H1 mixer: the muP multipliers sit where the equations put them. Check: a FalconH1 with
multipliers equals the same branches with the multipliers folded into the weights (plain Mamba2
and Attention, all multipliers 1), in float64; the SwiGLU MLP multipliers likewise. The
transformers equivalence of the whole model is in tests/arch/test_convert.py."""
import pytest
import torch

from parazoo.arch import MIXERS, ModelConfig
from parazoo.arch.mlp import SwiGLU
from parazoo.ops.testing import assert_close

D = 32
MULTS = dict(key_multiplier=0.9, attention_in_multiplier=1.1, attention_out_multiplier=0.6, ssm_in_multiplier=1.2,
             ssm_out_multiplier=0.8, ssm_multipliers=[0.9, 1.1, 1.2, 0.7, 1.3])
SHAPE = dict(n_heads=4, n_kv_heads=2, d_ssm=48, mamba_headdim=8, mamba_d_state=4, mamba_ngroups=2, mamba_chunk_size=4)


@pytest.mark.parametrize("rmsnorm", [False, True])
def test_multipliers_equal_folded_weights(rmsnorm):
    torch.manual_seed(0)
    m = MIXERS["falcon_h1"](D, mamba_rmsnorm=rmsnorm, **SHAPE, **MULTS).double().eval()
    plain = MIXERS["falcon_h1"](D, mamba_rmsnorm=rmsnorm, **SHAPE).double().eval()
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():
        mb, pb = m.mamba, plain.mamba
        pb.in_proj.weight.mul_(mb.in_proj.scale[:, None] * MULTS["ssm_in_multiplier"])
        pb.out_proj.weight.mul_(MULTS["ssm_out_multiplier"])
        a, pa = MULTS["attention_in_multiplier"], plain.self_attn
        pa.q_proj.weight.mul_(a)
        pa.k_proj.weight.mul_(a * MULTS["key_multiplier"])
        pa.v_proj.weight.mul_(a)
        pa.o_proj.weight.mul_(MULTS["attention_out_multiplier"])
    x = torch.randn(2, 11, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, s = m(x)
    assert_close(y, plain(x)[0], name="multipliers vs folded weights")
    assert set(s) == {"conv_state", "ssm_state", "k", "v", "pos"}
    # segment boundaries: z | x | B | C | dt
    di, GN, H = 48, 2 * 4, 6
    sc = m.mamba.in_proj.scale
    assert sc.shape == (2 * di + 2 * GN + H,)
    for (lo, hi), v in zip([(0, di), (di, 2 * di), (2 * di, 2 * di + GN), (2 * di + GN, 2 * di + 2 * GN),
                            (2 * di + 2 * GN, 2 * di + 2 * GN + H)], MULTS["ssm_multipliers"]):
        assert torch.all(sc[lo:hi] == v)
    y_plain_mults, _ = MIXERS["falcon_h1"](D, mamba_rmsnorm=rmsnorm, **SHAPE).double().eval().forward(x)
    assert (y_plain_mults - y).abs().max() > 1e-3  # the check can fail


def test_swiglu_multipliers():
    torch.manual_seed(0)
    mlp = SwiGLU(D, 48, multipliers=[0.7, 1.4]).double()
    x = torch.randn(3, D, dtype=torch.float64)
    ref = 1.4 * mlp.down_proj(torch.nn.functional.silu(0.7 * mlp.gate_proj(x)) * mlp.up_proj(x))
    assert_close(mlp(x), ref, name="SwiGLU with (gate, down) multipliers")
    with pytest.raises(ValueError, match="mlp_multipliers"):
        ModelConfig(mlp="gelu", mlp_multipliers=[1.0, 2.0])
    with pytest.raises(ValueError, match="mlp_multipliers"):
        ModelConfig(mlp_multipliers=[1.0])


def test_bad_options():
    with pytest.raises(ValueError, match="ssm_multipliers"):
        MIXERS["falcon_h1"](D, ssm_multipliers=[1.0, 1.0])
    with pytest.raises(ValueError, match="headdim"):
        MIXERS["falcon_h1"](D, d_ssm=50, mamba_headdim=8)


def test_presets_build():
    from parazoo.arch import LanguageModel

    m = LanguageModel(ModelConfig.from_name("falcon-h1-tiny"))
    ids = torch.randint(0, 256, (1, 5))
    assert m(ids)[0].shape == (1, 5, 256)
    with torch.device("meta"):
        n = LanguageModel(ModelConfig.from_name("falcon-h1-0.5b")).num_parameters()
    assert 0.4e9 < n < 0.7e9, n  # Falcon-H1-0.5B: about 0.5B parameters
