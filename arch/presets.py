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
