"""LanguageModel, ModelConfig and the shared layers (RoPE, norms, MLPs)."""
import json

import pytest
import torch

from parazoo.arch import MIXERS, PRESETS, LanguageModel, ModelConfig
from parazoo.arch.rope import RotaryEmbedding
from parazoo.ops.testing import assert_close


def tiny(**kw):
    base = dict(vocab_size=50, d_model=32, n_layers=2, mixer="attention", mixer_kwargs={"n_heads": 4})
    base.update(kw)
    return ModelConfig(**base)


# ---------------------------------------------------------------- config
def test_config_roundtrip_dict_json_yaml():
    c = tiny(mlp="gelu", pos_emb="learned", max_seq_len=64, tie_embeddings=False)
    assert ModelConfig.from_dict(c.to_dict()) == c
    assert ModelConfig.from_json(c.to_json()) == c
    assert ModelConfig.from_yaml(c.to_yaml()) == c


def test_config_rejects_unknown_and_invalid_fields():
    with pytest.raises(ValueError, match="d_modle.*did you mean 'd_model'"):
        ModelConfig.from_dict({"d_modle": 3})
    with pytest.raises(ValueError, match="mlp"):
        tiny(mlp="relu")
    with pytest.raises(ValueError, match="n_layers"):
        tiny(n_layers=0)
    with pytest.raises(ValueError, match="unknown mixer"):
        tiny(mixer="nope")
    with pytest.raises(ValueError, match="layer_mixers"):
        tiny(layer_mixers=["attention"])  # 1 entry for 2 layers


def test_presets():
    assert "attention-tiny" in PRESETS
    c = ModelConfig.from_name("attention-tiny", n_layers=1)
    assert c.n_layers == 1 and PRESETS["attention-tiny"].n_layers == 2
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.from_name("no-such-model")


def test_gpt2_small_parameter_count():
    # GPT-2 small: 124,439,808 parameters (tied head, learned positions)
    m = LanguageModel(ModelConfig.from_name("gpt2-small"))
    assert m.num_parameters() == 124_439_808


# ---------------------------------------------------------------- model
@pytest.mark.parametrize("kw", [{}, {"mlp": "gelu", "norm": "layernorm", "pos_emb": "learned", "max_seq_len": 32},
                                {"tie_embeddings": False}, {"mlp": "none"},
                                {"mixer_kwargs": {"n_heads": 4, "n_kv_heads": 2}},
                                {"embedding_multiplier": 2.0, "logits_multiplier": 0.5}])
def test_forward_and_continuation(kw):
    m = LanguageModel(tiny(**kw)).double().eval()
    ids = torch.randint(0, 50, (2, 11))
    logits, _ = m(ids)
    assert logits.shape == (2, 11, 50)
    la, s = m(ids[:, :4])
    lb, s = m(ids[:, 4:], s)
    assert s.pos == 11
    assert_close(torch.cat([la, lb], 1), logits)


def test_tied_and_untied_head():
    tied = LanguageModel(tiny())
    assert tied.head is None
    untied = LanguageModel(tiny(tie_embeddings=False))
    assert untied.num_parameters() == tied.num_parameters() + 50 * 32


def test_layer_mixers_per_layer():
    c = tiny(layer_mixers=["attention", {"mixer": "attention", "mixer_kwargs": {"n_heads": 2}}])
    m = LanguageModel(c)
    assert m.blocks[0].mixer.n_heads == 4 and m.blocks[1].mixer.n_heads == 2


def test_greedy_generation_equals_argmax_of_full_forwards():
    torch.manual_seed(0)
    m = LanguageModel(tiny()).eval()
    prompt = torch.randint(0, 50, (2, 5))
    out = m.generate(prompt, 12, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            logits, _ = m(seq)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_sampling_is_reproducible_with_generator_and_respects_top_k():
    m = LanguageModel(tiny()).eval()
    prompt = torch.randint(0, 50, (1, 3))
    a = m.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = m.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # top_k=1 is greedy
    g = m.generate(prompt, 8, temperature=0)
    k1 = m.generate(prompt, 8, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(g, k1)


def test_bad_inputs_raise_before_compute():
    m = LanguageModel(tiny(pos_emb="learned", max_seq_len=8))
    with pytest.raises(ValueError, match="vocab_size"):
        m(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="vocab_size"):
        m(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        m(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="batch, seq_len"):
        m(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 9, dtype=torch.long))
    _, s = m(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(2, 3, dtype=torch.long), s)
    with pytest.raises(ValueError, match="batch size"):
        m(torch.zeros(3, 1, dtype=torch.long), s)
    other = LanguageModel(tiny(n_layers=3))
    _, s_other = other(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="another config"):
        m(torch.zeros(2, 1, dtype=torch.long), s_other)
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(torch.zeros(1, 1, dtype=torch.long), -1)


def test_save_and_load_pretrained(tmp_path):
    m = LanguageModel(tiny(tie_embeddings=False)).eval()
    m.save_pretrained(str(tmp_path / "ckpt"))
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["d_model"] == 32
    m2 = LanguageModel.from_pretrained(str(tmp_path / "ckpt")).eval()
    ids = torch.randint(0, 50, (2, 7))
    assert torch.equal(m(ids)[0], m2(ids)[0])
    with pytest.raises(ValueError, match="does not exist"):
        LanguageModel.from_pretrained(str(tmp_path / "missing"))


def test_no_weight_decay_marks_embeddings():
    m = LanguageModel(tiny())
    assert getattr(m.embed.weight, "_no_weight_decay", False)


# ---------------------------------------------------------------- RoPE
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("freqs", ["power", "linspace"])
def test_rope_is_a_relative_rotation(interleaved, freqs):
    rope = RotaryEmbedding(16, interleaved=interleaved, freqs=freqs).double()
    q = torch.randn(1, 1, 1, 16, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, dtype=torch.float64)
    # norm preserved; <rope(q, m), rope(k, n)> depends only on m - n
    assert_close(rope(q, 5).norm(), q.norm())
    d1 = (rope(q, 7) * rope(k, 3)).sum()
    d2 = (rope(q, 14) * rope(k, 10)).sum()
    assert_close(d1, d2)
    assert not torch.allclose(rope(q, 1), q)


def test_rope_offset_matches_slicing():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 10, 3, 8)
    full = rope(x, 0)
    assert_close(rope(x[:, 4:], 4), full[:, 4:])


def test_rope_pairing_conventions():
    # interleaved pairs (0,1); half pairs (0, D/2): rotate a unit vector in channel 0 by pos 1
    x = torch.zeros(1, 1, 1, 4)
    x[..., 0] = 1
    a = RotaryEmbedding(4, interleaved=True)(x, 1)
    b = RotaryEmbedding(4, interleaved=False)(x, 1)
    c, s = torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))
    assert_close(a.flatten(), torch.stack([c, s, torch.tensor(0.0), torch.tensor(0.0)]))
    assert_close(b.flatten(), torch.stack([c, torch.tensor(0.0), s, torch.tensor(0.0)]))
