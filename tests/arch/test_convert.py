"""Falcon-H1 checkpoint conversion: a tiny random transformers FalconH1ForCausalLM, converted with
parazoo.arch.convert.from_hf_falcon_h1, gives the same logits (fp32, within 1e-4) and the same
greedy generation. Every muP multiplier is set away from 1 so that a misplaced one shows."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "FalconH1Config"):
    pytest.skip("this transformers has no FalconH1", allow_module_level=True)

from parazoo.arch.convert import falcon_h1_config_from_hf, from_hf_falcon_h1  # noqa: E402

VOCAB = 97

MULTS = dict(lm_head_multiplier=0.7, embedding_multiplier=1.3, mlp_multipliers=[0.8, 1.2], key_multiplier=0.9,
             attention_in_multiplier=1.1, attention_out_multiplier=0.6, ssm_in_multiplier=1.2, ssm_out_multiplier=0.8,
             ssm_multipliers=[0.9, 1.1, 1.2, 0.7, 1.3])

VARIANTS = {
    # gated RMSNorm in groups (norm after gate), separate head, no biases
    "rmsnorm-groups": dict(mamba_rms_norm=True, mamba_norm_before_gate=False, mamba_n_groups=2,
                           tie_word_embeddings=False),
    # Falcon-H1's released setting: no Mamba norm (y * silu(z)); tied head; biases everywhere
    "no-norm-tied-bias": dict(mamba_rms_norm=False, mamba_n_groups=1, tie_word_embeddings=True, attention_bias=True,
                              mlp_bias=True, mamba_proj_bias=True, projectors_bias=True),
    # RMSNorm(y) * silu(z)
    "norm-before-gate": dict(mamba_rms_norm=True, mamba_norm_before_gate=True, mamba_n_groups=1,
                             tie_word_embeddings=False),
}


def make_pair(variant):
    torch.manual_seed(0)
    cfg = transformers.FalconH1Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, mamba_d_ssm=96, mamba_n_heads=6, mamba_d_head=16, mamba_d_state=8,
        mamba_chunk_size=8, rope_parameters={"rope_type": "default", "rope_theta": 1e4}, max_position_embeddings=128,
        rms_norm_eps=1e-5, **MULTS, **VARIANTS[variant])
    hf = transformers.FalconH1ForCausalLM(cfg).eval()
    with torch.no_grad():  # move every weight away from its init (ones, zeros) so that each one matters
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, hf, from_hf_falcon_h1(hf.state_dict(), cfg)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_equal_transformers(variant):
    cfg, hf, ours = make_pair(variant)
    ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))  # 19: not a chunk multiple
    with torch.no_grad():
        ref = hf(ids).logits
        out, _ = ours(ids)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    # the comparison can fail: one multiplier left out changes the logits far beyond 1e-4
    wrong = from_hf_falcon_h1(hf.state_dict(), cfg.__class__(**{**cfg.to_dict(), "ssm_out_multiplier": 1.0}))
    with torch.no_grad():
        assert (wrong(ids)[0] - ref).abs().max() > 1e-2


def test_greedy_generation_equal_transformers():
    _, hf, ours = make_pair("rmsnorm-groups")
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=10, do_sample=False, attention_mask=torch.ones_like(ids))
    out = ours.generate(ids, 10, temperature=0)
    assert torch.equal(out, ref), f"parazoo {out.tolist()} vs transformers {ref.tolist()}"


def test_config_mapping_and_bad_checkpoint():
    cfg, hf, _ = make_pair("rmsnorm-groups")
    mc = falcon_h1_config_from_hf(cfg)
    assert mc.mixer == "falcon_h1" and mc.logits_multiplier == 0.7 and mc.mlp_multipliers == [0.8, 1.2]
    assert mc.mixer_kwargs["d_ssm"] == 96 and mc.mixer_kwargs["mamba_ngroups"] == 2
    sd = dict(hf.state_dict())
    sd.pop("model.layers.0.mamba.A_log")
    with pytest.raises(ValueError, match="missing"):
        from_hf_falcon_h1(sd, cfg)
    sd = dict(hf.state_dict())
    sd["model.layers.0.mamba.D"] = torch.zeros(5)
    with pytest.raises(ValueError, match="shape"):
        from_hf_falcon_h1(sd, cfg)
    with pytest.raises(ValueError, match="hidden_act"):
        from_hf_falcon_h1(hf.state_dict(), {**cfg.to_dict(), "hidden_act": "gelu"})
