"""Checkpoint converters: other libraries' checkpoints -> parazoo LanguageModel.

``from_hf_falcon_h1(state_dict, hf_config)``: a transformers ``FalconH1ForCausalLM`` checkpoint
(its state_dict and its ``FalconH1Config``, or the config as a dict) -> a LanguageModel of
``falcon_h1`` mixers with the same numerics:

    h_0    = embedding_multiplier * E[tokens]
    layer: x = x + ssm_out_mult * Mamba2'(ssm_in_mult * RMSNorm(x)) + attn_out_mult * Attn(attn_in_mult * RMSNorm(x))
           x = x + down_mult * W_down(silu(gate_mult * W_gate x') * W_up x'),  x' = RMSNorm(x)
    logits = lm_head_multiplier * W_head RMSNorm_f(x)
(see arch/falcon_h1.py for the branches). Every tensor of the checkpoint must be used and every
parameter of the model filled (ValueError otherwise); options parazoo does not implement
(another activation, a dt limit, scaled RoPE) are refused with a ValueError naming the field.
"""
from __future__ import annotations

import math
import re

import torch

from .config import ModelConfig
from .model import LanguageModel

__all__ = ["from_hf_falcon_h1", "falcon_h1_config_from_hf"]


def _get(cfg, name, default=None):
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _rope_theta(cfg) -> float:
    rp = _get(cfg, "rope_parameters")
    if isinstance(rp, dict):
        rtype = rp.get("rope_type", "default")
        if rtype != "default":
            raise ValueError(f"from_hf_falcon_h1: hf_config.rope_parameters['rope_type'] must be 'default', got {rtype!r}")
        return float(rp["rope_theta"])
    if _get(cfg, "rope_scaling"):
        raise ValueError(f"from_hf_falcon_h1: hf_config.rope_scaling must be None, got {_get(cfg, 'rope_scaling')!r}")
    return float(_get(cfg, "rope_theta", 10000.0))


def falcon_h1_config_from_hf(hf_config) -> ModelConfig:
    """A ModelConfig equal to a transformers FalconH1Config (object or dict)."""
    c = lambda n, d=None: _get(hf_config, n, d)  # noqa: E731
    if c("hidden_act", "silu") != "silu":
        raise ValueError(f"from_hf_falcon_h1: hf_config.hidden_act must be 'silu', got {c('hidden_act')!r}")
    lim = c("time_step_limit", (0.0, float("inf")))
    if lim is not None and (float(lim[0]) != 0.0 or not math.isinf(float(lim[1]))):
        raise ValueError(f"from_hf_falcon_h1: hf_config.time_step_limit must be (0.0, inf) (no dt clamp), got {lim!r}")
    d = int(c("hidden_size"))
    n_heads = int(c("num_attention_heads"))
    n_kv = int(c("num_key_value_heads") or n_heads)
    head_dim = c("head_dim") or d // n_heads
    d_ssm = c("mamba_d_ssm")
    d_ssm = int(c("mamba_expand") * d) if d_ssm is None else int(d_ssm)
    m_heads, m_dhead = int(c("mamba_n_heads")), c("mamba_d_head")
    m_dhead = d_ssm // m_heads if m_dhead in (None, "auto") else int(m_dhead)
    if m_heads * m_dhead != d_ssm:
        raise ValueError(f"from_hf_falcon_h1: mamba_n_heads ({m_heads}) * mamba_d_head ({m_dhead}) != d_ssm ({d_ssm})")
    eps = float(c("rms_norm_eps", 1e-5))
    mixer_kwargs = dict(
        n_heads=n_heads, n_kv_heads=n_kv, head_dim=int(head_dim), rope_base=_rope_theta(hf_config),
        attention_bias=bool(c("attention_bias", False)), d_ssm=d_ssm, mamba_d_state=int(c("mamba_d_state")),
        mamba_headdim=m_dhead, mamba_ngroups=int(c("mamba_n_groups", 1)), mamba_d_conv=int(c("mamba_d_conv", 4)),
        mamba_chunk_size=int(c("mamba_chunk_size", 256)), mamba_rmsnorm=bool(c("mamba_rms_norm", False)),
        mamba_norm_before_gate=bool(c("mamba_norm_before_gate", True)),
        mamba_conv_bias=bool(c("mamba_conv_bias", True)), mamba_proj_bias=bool(c("mamba_proj_bias", False)),
        projectors_bias=bool(c("projectors_bias", False)), norm_eps=eps,
        key_multiplier=float(c("key_multiplier", 1.0)),
        attention_in_multiplier=float(c("attention_in_multiplier", 1.0)),
        attention_out_multiplier=float(c("attention_out_multiplier", 1.0)),
        ssm_in_multiplier=float(c("ssm_in_multiplier", 1.0)), ssm_out_multiplier=float(c("ssm_out_multiplier", 1.0)),
        ssm_multipliers=[float(v) for v in (c("ssm_multipliers") or [1.0] * 5)],
    )
    mlp_mult = [float(v) for v in (c("mlp_multipliers") or [1.0, 1.0])]
    return ModelConfig(
        name=str(c("_name_or_path", "") or "falcon-h1-hf"), vocab_size=int(c("vocab_size")), d_model=d,
        n_layers=int(c("num_hidden_layers")), mixer="falcon_h1", mixer_kwargs=mixer_kwargs, mlp="swiglu",
        d_ff=int(c("intermediate_size")), mlp_bias=bool(c("mlp_bias", False)), norm="rmsnorm", norm_eps=eps,
        max_seq_len=int(c("max_position_embeddings", 8192)), tie_embeddings=bool(c("tie_word_embeddings", False)),
        embedding_multiplier=float(c("embedding_multiplier", 1.0)),
        logits_multiplier=float(c("lm_head_multiplier", 1.0)),
        mlp_multipliers=None if mlp_mult == [1.0, 1.0] else mlp_mult)


# transformers name (after "model.layers.<i>.") -> parazoo name (after "trunk.blocks.<i>.")
_LAYER_RENAMES = (("input_layernorm.", "norm1."), ("pre_ff_layernorm.", "norm2."), ("feed_forward.", "mlp."),
                  ("mamba.", "mixer.mamba."), ("self_attn.", "mixer.self_attn."))
_TOP_RENAMES = {"model.embed_tokens.weight": "embed.weight", "model.final_layernorm.weight": "norm_f.weight",
                "lm_head.weight": "head.weight"}


def _rename(key: str) -> str | None:
    if key in _TOP_RENAMES:
        return _TOP_RENAMES[key]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if m is None:
        return None
    i, rest = m.groups()
    for old, new in _LAYER_RENAMES:
        if rest.startswith(old):
            return f"trunk.blocks.{i}.{new}{rest[len(old):]}"
    return None


def from_hf_falcon_h1(state_dict: dict, hf_config, dtype: torch.dtype | None = None) -> LanguageModel:
    """Build a parazoo LanguageModel from a transformers FalconH1ForCausalLM ``state_dict`` and its
    ``FalconH1Config`` (or config dict). The model is returned in eval mode, in ``dtype`` (default:
    the checkpoint's dtype)."""
    if not isinstance(state_dict, dict):
        raise ValueError(f"from_hf_falcon_h1: argument 'state_dict' must be a dict of tensors, got {type(state_dict).__name__}")
    config = falcon_h1_config_from_hf(hf_config)
    model = LanguageModel(config)
    target = model.state_dict()
    loaded, unknown = {}, []
    for k, v in state_dict.items():
        if k.endswith(("rotary_emb.inv_freq", "mamba.mup_vector")) or (k == "lm_head.weight" and config.tie_embeddings):
            continue                                  # derived buffers / the tied head
        new = _rename(k)
        if new is None or new not in target:
            unknown.append(k)
            continue
        if tuple(v.shape) != tuple(target[new].shape):
            raise ValueError(f"from_hf_falcon_h1: state_dict[{k!r}] has shape {tuple(v.shape)}, expected "
                             f"{tuple(target[new].shape)} for {new!r}")
        loaded[new] = v
    missing = sorted(set(target) - set(loaded))
    if unknown or missing:
        raise ValueError(f"from_hf_falcon_h1: state_dict does not match the config: unknown keys {unknown[:8]}, "
                         f"missing parameters {missing[:8]}")
    dtype = dtype or next(iter(loaded.values())).dtype
    model.to(dtype)
    model.load_state_dict(loaded, strict=True)
    return model.eval()
