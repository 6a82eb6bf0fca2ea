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
