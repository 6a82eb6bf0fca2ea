"""Named model configurations (litgpt's name_to_config idea). Mixer issues add their papers'
reference models here."""
from .config import ModelConfig, register_preset

# A tiny attention model for tests and the quickstart demo (byte-level vocabulary).
register_preset(ModelConfig(name="attention-tiny", vocab_size=256, d_model=64, n_layers=2,
                            mixer="attention", mixer_kwargs={"n_heads": 4}, max_seq_len=1024))
# GPT-2 small-shaped attention baseline (124M with vocab 50257, learned positions, GELU MLP, LayerNorm).
register_preset(ModelConfig(name="gpt2-small", vocab_size=50257, d_model=768, n_layers=12, mixer="attention",
                            mixer_kwargs={"n_heads": 12, "rope": False, "bias": True}, mlp="gelu", mlp_bias=True,
                            norm="layernorm", pos_emb="learned", max_seq_len=1024, tie_embeddings=True))
# Llama-style attention baseline at ~125M scale (RoPE, SwiGLU, RMSNorm).
register_preset(ModelConfig(name="llama-125m", vocab_size=32000, d_model=768, n_layers=12, mixer="attention",
                            mixer_kwargs={"n_heads": 12}, mlp="swiglu", norm="rmsnorm", max_seq_len=2048,
                            tie_embeddings=True))

# RetNet (Sun et al. 2023). Paper Sec. 4.1: retention W_Q, W_K d x d, W_V, W_G d x 2d, W_O 2d x d;
# FFN width 2d (keeps the Transformer's parameter count); the smallest paper model is 1.3B:
# d 2048, 24 layers (Table 2); heads of key width 256 (torchscale's RetNet configs: 2048 / 8).
# The vocabulary is not given there: GPT-2's. "retnet-small" is the same recipe at the 130M class.
register_preset(ModelConfig(name="retnet-tiny", vocab_size=256, d_model=64, n_layers=2, mixer="retnet",
                            mixer_kwargs={"n_heads": 4}, mlp="gelu", d_ff=128, norm="layernorm", max_seq_len=1024))
register_preset(ModelConfig(name="retnet-small", vocab_size=50257, d_model=768, n_layers=12, mixer="retnet",
                            mixer_kwargs={"n_heads": 3}, mlp="gelu", d_ff=1536, norm="layernorm", max_seq_len=2048))
register_preset(ModelConfig(name="retnet-1.3b", vocab_size=50257, d_model=2048, n_layers=24, mixer="retnet",
                            mixer_kwargs={"n_heads": 8}, mlp="gelu", d_ff=4096, norm="layernorm", max_seq_len=2048))

# ---- structures (arch/structures.py) -------------------------------------------------------
# Kraken 125M, 4-way (NeurIPS 2024, Table: 12 layers, 12 heads, ffn_expansion 2, d 504 for 4 ways),
# GPT-2 style: learned positions, LayerNorm, GELU MLP, GPT-2 vocabulary.
for _ways, _d in ((2, 678), (4, 504), (6, 418)):
    register_preset(ModelConfig(name=f"kraken-125m-{_ways}way", vocab_size=50257, d_model=_d, n_layers=12,
                                mixer="attention",  # 678 and 418 are not multiples of 12: heads of d // 12
                                mixer_kwargs={"n_heads": 12, "head_dim": _d // 12, "rope": False, "bias": True},
                                mlp="gelu", d_ff=2 * _d, mlp_bias=True, norm="layernorm", pos_emb="learned",
                                max_seq_len=1024, structure="kraken", kraken_splits=_ways))
# Ladder residual at 1B class (Llama-3.2-1B shape: d 2048, 16 layers, 32 heads / 8 KV heads,
# SwiGLU 8192, vocab 128256), every layer laddered; "-partial" ladders the last 8 layers.
_llama1b = dict(vocab_size=128256, d_model=2048, n_layers=16, mixer="attention",
                mixer_kwargs={"n_heads": 32, "n_kv_heads": 8, "rope_base": 500000.0}, mlp="swiglu", d_ff=8192,
                norm="rmsnorm", max_seq_len=8192, tie_embeddings=True)
register_preset(ModelConfig(name="ladder-1b", structure="ladder", **_llama1b))
register_preset(ModelConfig(name="ladder-1b-partial", structure="ladder", ladder_layers=8, **_llama1b))
register_preset(ModelConfig(name="llama-1b", **_llama1b))
# ParScale P in {1, 2, 4, 8} over a Qwen2.5-0.5B-shaped base (d 896, 24 layers, 14 heads / 2 KV,
# SwiGLU 4864, vocab 151936, RoPE base 1e6), 48 prefix tokens, eps 0.01. P=1 is the base model.
for _p in (1, 2, 4, 8):
    register_preset(ModelConfig(name=f"parscale-qwen2.5-0.5b-p{_p}", vocab_size=151936, d_model=896, n_layers=24,
                                mixer="attention", mixer_kwargs={"n_heads": 14, "n_kv_heads": 2, "rope_base": 1e6, "bias": True,
                                                                  "out_bias": False},
                                mlp="swiglu", d_ff=4864, norm="rmsnorm", norm_eps=1e-6, max_seq_len=32768,
                                tie_embeddings=True, parscale_n=_p, parscale_prefix=48, parscale_eps=0.01))

# ---- GAM (Gated Associative Memory, 2025) ---------------------------------------------------
# Paper model (WikiText-2 / TinyStories): d 512, 6 layers, 512 memory slots, BPE vocab 10k,
# context 256, learned positions, tied head, pre-LN blocks with FFN Linear(4d) -> GELU -> Linear.
register_preset(ModelConfig(name="gam-wikitext2", vocab_size=10000, d_model=512, n_layers=6, mixer="gam",
                            mixer_kwargs={"n_slots": 512}, mlp="gelu", d_ff=2048, mlp_bias=True, norm="layernorm",
                            pos_emb="learned", max_seq_len=256, tie_embeddings=True, dropout=0.1))
register_preset(ModelConfig(name="gam-tiny", vocab_size=256, d_model=64, n_layers=2, mixer="gam",
                            mixer_kwargs={"n_slots": 64}, mlp="gelu", mlp_bias=True, norm="layernorm",
                            pos_emb="learned", max_seq_len=1024))

# Mamba (Gu & Dao 2023) and Mamba-2 (Dao & Gu 2024): mixer-only blocks (no MLP), RMSNorm, tied
# embeddings, GPT-NeoX vocabulary 50277 padded to a multiple of 8 (as mamba_ssm's pretrained models).
register_preset(ModelConfig(name="mamba-tiny", vocab_size=256, d_model=64, n_layers=2, mixer="mamba", mlp="none",
                            max_seq_len=1024))
register_preset(ModelConfig(name="mamba-130m", vocab_size=50280, d_model=768, n_layers=24, mixer="mamba", mlp="none",
                            max_seq_len=2048, tie_embeddings=True))
register_preset(ModelConfig(name="mamba2-tiny", vocab_size=256, d_model=64, n_layers=2, mixer="mamba2",
                            mixer_kwargs={"d_state": 16, "headdim": 16, "chunk_size": 16}, mlp="none", max_seq_len=1024))
register_preset(ModelConfig(name="mamba2-130m", vocab_size=50280, d_model=768, n_layers=24, mixer="mamba2",
                            mixer_kwargs={"d_state": 128, "headdim": 64}, mlp="none", max_seq_len=2048,
                            tie_embeddings=True))

# ---- hybrid heads (arch/falcon_h1.py, arch/hymba.py) -----------------------------------------
# Falcon-H1 (TII 2025). Tiny: for tests. "falcon-h1-0.5b": the transformers FalconH1 docs table
# (H1 0.5B: 36 layers, d 1024, 8 attention heads / 2 KV heads, 24 Mamba heads, head dims 64 / 64,
# d_state 128, context 4K); d_ssm = 24 * 64 = 1536. Not verified here (no access to the released
# config.json): vocab 32784, MLP width 2048, rope_theta 1e11, mamba chunk 128, no Mamba RMSNorm,
# untied head, and the muP multipliers (left at 1: load a real checkpoint with
# parazoo.arch.convert.from_hf_falcon_h1, which reads them from its config).
register_preset(ModelConfig(name="falcon-h1-tiny", vocab_size=256, d_model=64, n_layers=2, mixer="falcon_h1",
                            mixer_kwargs={"n_heads": 4, "n_kv_heads": 2, "d_ssm": 96, "mamba_headdim": 16,
                                          "mamba_d_state": 16, "mamba_chunk_size": 16, "rope_base": 1e4},
                            mlp="swiglu", d_ff=160, max_seq_len=1024, tie_embeddings=False))
register_preset(ModelConfig(name="falcon-h1-0.5b", vocab_size=32784, d_model=1024, n_layers=36, mixer="falcon_h1",
                            mixer_kwargs={"n_heads": 8, "n_kv_heads": 2, "head_dim": 64, "d_ssm": 1536,
                                          "mamba_headdim": 64, "mamba_d_state": 128, "mamba_ngroups": 1,
                                          "mamba_chunk_size": 128, "rope_base": 1e11},
                            mlp="swiglu", d_ff=2048, max_seq_len=4096, tie_embeddings=False))
# Hymba (NVIDIA 2024, arXiv 2411.13676). "hymba-1.5b": d 1600, 32 layers, 25 attention heads /
# 5 KV heads, SSM state 16, expand 2 (d_inner 3200), 128 meta tokens, MLP 5504, vocab 32001
# (paper Table 1 / the released Hymba-1.5B-Base config as recalled, not verified here). Here
# every attention layer is global (the paper: sliding window 1024 except 3 global layers, and
# cross-layer KV sharing, neither implemented) and attention heads span d_inner (head_dim 128).
register_preset(ModelConfig(name="hymba-tiny", vocab_size=256, d_model=64, n_layers=2, mixer="hymba",
                            mixer_kwargs={"n_heads": 4, "n_kv_heads": 2}, mlp="swiglu", max_seq_len=1024,
                            n_meta_tokens=4))
register_preset(ModelConfig(name="hymba-1.5b", vocab_size=32001, d_model=1600, n_layers=32, mixer="hymba",
                            mixer_kwargs={"n_heads": 25, "n_kv_heads": 5, "d_state": 16, "expand": 2},
                            mlp="swiglu", d_ff=5504, norm_eps=1e-6, max_seq_len=8192, tie_embeddings=True,
                            n_meta_tokens=128))
