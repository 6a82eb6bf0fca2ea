"""The language model (nanoGPT-style, readable top to bottom):

    h_0 = embedding_multiplier * E[tokens] (+ P[positions] when pos_emb="learned")
    h_0 = concat(M, h_0) at the start of a sequence when n_meta_tokens > 0 (Hymba's learnable
          meta tokens M (n_meta, d): they enter the state, get no positions and no logits)
    for each layer l:  h = h + Mixer_l(Norm(h));  h = h + MLP_l(Norm(h))     (pre-norm residual)
    logits = logits_multiplier * Head(Norm_f(h))        (Head tied to E unless tie_embeddings=False)

The layer loop is the model's structure (arch/structures.py): standard, ladder or kraken; with
parscale_n = P > 1 the input is replicated into P streams that start from learned states and are
aggregated after the final norm.

``forward(input_ids, state=None) -> (logits, state)``: with a state the model continues from it,
so prefill + one-token steps equal one full forward (the mixer contract, layer by layer).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .mlp import build_mlp
from .norms import build_norm
from .registry import build_mixer
from .structures import ParScale, build_trunk

__all__ = ["Block", "LanguageModel", "ModelState"]


@dataclass
class ModelState:
    """Recurrent state of a LanguageModel: one mixer state per layer, the number of tokens
    consumed, and the fingerprint of the config that built it."""

    layers: list
    pos: int
    batch_size: int
    fingerprint: str


class Block(nn.Module):
    """Pre-norm residual block: x + Mixer(Norm(x)), then x + MLP(Norm(x)) (no MLP when mlp='none')."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        name, kwargs = config.mixer_specs()[layer_idx]
        self.layer_idx = layer_idx
        self.norm1 = build_norm(config.norm, config.d_model, config.norm_eps, config.norm_bias)
        self.mixer = build_mixer(name, config.d_model, **kwargs)
        self.mlp = build_mlp(config.mlp, config.d_model, config.d_ff, config.mlp_bias, config.mlp_multipliers)
        self.norm2 = build_norm(config.norm, config.d_model, config.norm_eps, config.norm_bias) if self.mlp is not None else None
        self.drop = nn.Dropout(config.dropout)
        # tensor parallelism (arch/tensor_parallel.py) sets these: the input hook of a sharded
        # branch (identity forward, all-reduce of the gradient) and whether its output is a
        # partial sum that the structure must all-reduce
        self.tp_in = None
        self.tp_mix_partial = False
        self.tp_ffn_partial = False

    def _in(self, x: torch.Tensor, sharded: bool) -> torch.Tensor:
        return self.tp_in(x) if sharded and self.tp_in is not None else x

    def mix(self, x: torch.Tensor, state=None):
        """The mixer branch's output (to be added to the stream) and the new state."""
        y, state = self.mixer(self._in(self.norm1(x), self.tp_mix_partial), state)
        return self.drop(y), state

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP branch's output (to be added to the stream)."""
        return self.drop(self.mlp(self._in(self.norm2(x), self.tp_ffn_partial)))

    def forward(self, x: torch.Tensor, state=None):
        if self.tp_mix_partial or self.tp_ffn_partial:
            raise RuntimeError("Block.forward: a tensor-parallel block runs inside its structure, which all-reduces its outputs")
        y, state = self.mix(x, state)
        x = x + y
        if self.mlp is not None:
            x = x + self.ffn(x)
        return x, state


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"LanguageModel: argument 'config' must be a ModelConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_embed = nn.Embedding(c.max_seq_len, c.d_model) if c.pos_emb == "learned" else None
        self.meta_tokens = nn.Parameter(torch.zeros(c.n_meta_tokens, c.d_model)) if c.n_meta_tokens else None
        self.drop = nn.Dropout(c.dropout)
        self.trunk = build_trunk(c, Block)
        self.parscale = ParScale(c, self.trunk.mixers()) if c.parscale_n > 1 else None
        self.norm_f = build_norm(c.norm, c.d_model, c.norm_eps, c.norm_bias)
        self.head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()
        self._fingerprint = hashlib.sha1(c.to_json().encode()).hexdigest()[:12]

    @property
    def blocks(self) -> list:
        """Every Block of the trunk, in layer order (splits of a layer together for kraken)."""
        return [m for m in self.trunk.modules() if isinstance(m, Block)]

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std) for embeddings and linear weights, zero biases, output
        projections of residual branches scaled by 1/sqrt(2 n_layers); then each mixer's own
        ``reset_parameters`` (Mamba's dt/A init and the like) overrides what it owns."""
        std = self.config.init_std
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
        resid = std / (2 * self.config.n_layers) ** 0.5
        for blk in self.trunk.modules():
            if not isinstance(blk, Block):
                continue
            for name, p in blk.named_parameters():
                if name.endswith(("o_proj.weight", "out_proj.weight", "down_proj.weight", "fc2.weight")):
                    nn.init.normal_(p, std=resid)
            if hasattr(blk.mixer, "reset_parameters"):
                blk.mixer.reset_parameters()
        if self.meta_tokens is not None:
            nn.init.normal_(self.meta_tokens, std=std)
        if self.parscale is not None:
            for params in self.parscale.prefix:
                for p in params.values():
                    nn.init.normal_(p, std=std)
        for p in (self.embed.weight, *( [self.pos_embed.weight] if self.pos_embed is not None else [])):
            p._no_weight_decay = True

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None, dtype=None) -> ModelState:
        device = device or self.embed.weight.device
        if self.parscale is not None:
            flat = self.parscale.initial_states(batch_size, dtype or self.embed.weight.dtype)
            layers = self.trunk.unflatten_state([{k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                                                  for k, v in s.items()} for s in flat])
        else:
            layers = self.trunk.init_state(batch_size, device=device, dtype=dtype)
        return ModelState(layers=layers, pos=0, batch_size=batch_size, fingerprint=self._fingerprint)

    def _check_inputs(self, input_ids, state):
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(f"LanguageModel: argument 'input_ids' must be a tensor, got {type(input_ids).__name__}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"LanguageModel: argument 'input_ids' must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"LanguageModel: argument 'input_ids' must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] == 0:
            raise ValueError("LanguageModel: argument 'input_ids' has seq_len 0; expected at least one token")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"LanguageModel: argument 'input_ids' must lie in [0, vocab_size={self.config.vocab_size}), "
                             f"got values in [{lo}, {hi}]")
        B, T = input_ids.shape
        pos = 0
        if state is not None:
            if not isinstance(state, ModelState):
                raise ValueError(f"LanguageModel: argument 'state' must be a ModelState from init_state()/forward(), got {type(state).__name__}")
            if state.fingerprint != self._fingerprint or len(state.layers) != self.config.n_layers:
                raise ValueError("LanguageModel: argument 'state' was built by a model with another config "
                                 f"(fingerprint {state.fingerprint}, this model {self._fingerprint})")
            if state.batch_size != B:
                raise ValueError(f"LanguageModel: argument 'state' was built for batch size {state.batch_size}, "
                                 f"but 'input_ids' has batch size {B}")
            pos = state.pos
        if self.pos_embed is not None and pos + T > self.config.max_seq_len:
            raise ValueError(f"LanguageModel: sequence of {pos + T} tokens (state pos {pos} + input {T}) exceeds the learned "
                             f"positional table max_seq_len={self.config.max_seq_len}")
        return pos

    # ------------------------------------------------------------------ forward
    def embed_tokens(self, input_ids: torch.Tensor, pos: int) -> torch.Tensor:
        h = self.embed(input_ids)
        if self.config.embedding_multiplier != 1.0:
            h = h * self.config.embedding_multiplier
        if self.pos_embed is not None:
            h = h + self.pos_embed(torch.arange(pos, pos + input_ids.shape[1], device=input_ids.device))
        return self.drop(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm_f(h)
        if self.parscale is not None:
            h = self.parscale.aggregate(h)
        out = self.head(h) if self.head is not None else F.linear(h, self.embed.weight)
        if self.config.logits_multiplier != 1.0:
            out = out * self.config.logits_multiplier
        return out

    def forward(self, input_ids: torch.Tensor, state: ModelState | None = None):
        """input_ids (B, T) int -> logits (B, T, vocab) float, new ModelState."""
        pos = self._check_inputs(input_ids, state)
        B = input_ids.shape[0]
        h = self.embed_tokens(input_ids, pos)
        n_meta = self.meta_tokens.shape[0] if self.meta_tokens is not None and pos == 0 else 0
        if n_meta:                                       # start of a sequence: prepend the meta tokens
            h = torch.cat([self.meta_tokens.to(h.dtype).expand(B, -1, -1), h], dim=1)
        if self.parscale is not None:
            h = self.parscale.replicate(h)  # (P B, T, d)
            layer_states = state.layers if state is not None else self.init_state(B, dtype=h.dtype).layers
        else:
            layer_states = state.layers if state is not None else self.trunk.init_state_none()
        h, new_states = self.trunk(h, layer_states)
        h = h[:, n_meta:]
        new_state = ModelState(layers=new_states, pos=pos + input_ids.shape[1], batch_size=B,
                               fingerprint=self._fingerprint)
        return self.logits(h), new_state

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Prefill once, then step one token at a time with the state.

        temperature 0 = greedy (argmax). top_k keeps the k most likely tokens. Returns
        (B, T + max_new_tokens) token ids."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"generate: argument 'max_new_tokens' must be an int >= 0, got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"generate: argument 'temperature' must be >= 0, got {temperature}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"generate: argument 'top_k' must be a positive int or None, got {top_k!r}")
        was_training = self.training
        self.eval()
        try:
            out = input_ids
            logits, state = self(input_ids)
            for i in range(max_new_tokens):
                nxt = self._sample(logits[:, -1].float(), temperature, top_k, generator)
                out = torch.cat([out, nxt], dim=1)
                if i + 1 < max_new_tokens:
                    logits, state = self(nxt, state)
            return out
        finally:
            self.train(was_training)

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)

    # ------------------------------------------------------------------ export
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
            if self.pos_embed is not None:
                n -= self.pos_embed.weight.numel()
        return n

    def save_pretrained(self, path: str) -> None:
        """Write ``config.json`` and ``model.safetensors`` (no pickle) to folder ``path``."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            f.write(self.config.to_json())
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.head is None:
            sd = {k: v for k, v in sd.items() if k != "head.weight"}
        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt", "library": "parazoo"})

    @classmethod
    def from_pretrained(cls, path: str, map_location: str | torch.device = "cpu") -> "LanguageModel":
        from safetensors.torch import load_file

        cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        for p in (cfg_path, w_path):
            if not os.path.exists(p):
                raise ValueError(f"from_pretrained: {p} does not exist (expected a folder written by save_pretrained)")
        with open(cfg_path) as f:
            config = ModelConfig.from_dict(json.load(f))
        model = cls(config)
        model.load_state_dict(load_file(w_path, device=str(map_location)))
        return model.to(map_location)
