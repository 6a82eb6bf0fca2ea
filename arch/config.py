"""ModelConfig: the whole language model as plain data (litgpt's idea), serialisable to
dict / JSON / YAML, validated on construction; unknown fields are errors. ``PRESETS`` maps a name
to a config (each paper's reference model is a preset; ``ModelConfig.from_name(name)``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelConfig", "PRESETS", "register_preset"]

PRESETS: dict[str, "ModelConfig"] = {}

_CHOICES = {
    "mlp": ("swiglu", "gelu", "none"),
    "norm": ("rmsnorm", "layernorm"),
    "pos_emb": ("none", "learned"),
    "structure": ("standard", "ladder", "kraken"),
}


@dataclass
class ModelConfig:
    """A language model: embedding -> n_layers blocks (pre-norm mixer + MLP, residuals) ->
    final norm -> head.

    mixer / mixer_kwargs: the registered mixer (``parazoo.arch.MIXERS``) and its options.
    layer_mixers: optional per-layer override, a list of n_layers entries, each a mixer name or
    {"mixer": name, "mixer_kwargs": {...}} (hybrid stacks).
    mlp: "swiglu" | "gelu" | "none" (mixer-only blocks, as Mamba's LM); d_ff: hidden width
    (default 8/3 d rounded to 64 for swiglu, 4 d for gelu).
    pos_emb: "none" (the mixers carry position: RoPE, recurrence) | "learned" (a table of
    max_seq_len positions, GPT-2 / GAM).
    embedding_multiplier / logits_multiplier: muP-style scalars (Falcon-H1), 1 = off.
    mlp_multipliers: [gate, down] muP scalars of the SwiGLU MLP (Falcon-H1), None = off.
    n_meta_tokens: learnable tokens prepended to every sequence at its start (Hymba), 0 = off;
    they are part of the state afterwards and get no logits.
    structure: "standard" | "ladder" (ladder_layers: None = all, k = the last k, or a list) |
    "kraken" (kraken_splits sub-stacks). parscale_n: P parallel streams sharing all weights
    (1 = off), each with a learned prefix state of parscale_prefix tokens for attention (a learned
    initial state for recurrent mixers), aggregated with label smoothing parscale_eps.
    """

    name: str = "custom"
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    mixer: str = "attention"
    mixer_kwargs: dict = field(default_factory=dict)
    layer_mixers: list | None = None
    mlp: str = "swiglu"
    d_ff: int | None = None
    mlp_bias: bool = False
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    pos_emb: str = "none"
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    embedding_multiplier: float = 1.0
    logits_multiplier: float = 1.0
    mlp_multipliers: list | None = None
    n_meta_tokens: int = 0
    # structures (arch/structures.py): properties of the model that work with any mixer
    structure: str = "standard"
    ladder_layers: int | list | None = None
    kraken_splits: int = 2
    parscale_n: int = 1
    parscale_prefix: int = 48
    parscale_eps: float = 0.01

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def pos_int(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")

        for n in ("vocab_size", "d_model", "n_layers", "max_seq_len"):
            pos_int(n)
        for n, choices in _CHOICES.items():
            if getattr(self, n) not in choices:
                raise ValueError(f"ModelConfig.{n} must be one of {choices}, got {getattr(self, n)!r}")
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or self.d_ff < 1):
            raise ValueError(f"ModelConfig.d_ff must be a positive int or None, got {self.d_ff!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.mlp_multipliers is not None:
            mm = self.mlp_multipliers
            if (not isinstance(mm, (list, tuple)) or len(mm) != 2 or self.mlp != "swiglu"
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mm)):
                raise ValueError(f"ModelConfig.mlp_multipliers must be None or [gate, down] numbers with mlp='swiglu', "
                                 f"got {mm!r} (mlp={self.mlp!r})")
        if not isinstance(self.n_meta_tokens, int) or isinstance(self.n_meta_tokens, bool) or self.n_meta_tokens < 0:
            raise ValueError(f"ModelConfig.n_meta_tokens must be an int >= 0, got {self.n_meta_tokens!r}")
        for n in ("kraken_splits", "parscale_n"):
            pos_int(n)
        if not isinstance(self.parscale_prefix, int) or self.parscale_prefix < 0:
            raise ValueError(f"ModelConfig.parscale_prefix must be an int >= 0, got {self.parscale_prefix!r}")
        if not 0.0 <= float(self.parscale_eps) < 1.0:
            raise ValueError(f"ModelConfig.parscale_eps must be in [0, 1), got {self.parscale_eps!r}")
        if self.structure == "kraken" and self.mlp == "none":
            raise ValueError("ModelConfig: structure='kraken' mixes splits through the MLP input; it needs mlp != 'none'")
        self.ladder_layer_set()
        if not isinstance(self.mixer_kwargs, dict):
            raise ValueError(f"ModelConfig.mixer_kwargs must be a dict, got {type(self.mixer_kwargs).__name__}")
        from .registry import MIXERS  # the registry is filled by importing parazoo.arch

        for i, (name, _) in enumerate(self.mixer_specs()):
            if MIXERS and name not in MIXERS:
                where = "mixer" if self.layer_mixers is None else f"layer_mixers[{i}]"
                raise ValueError(f"ModelConfig.{where}: unknown mixer {name!r}; registered: {sorted(MIXERS)}")

    def ladder_layer_set(self) -> frozenset:
        """Indices of the laddered layers: ladder_layers None = all, an int k = the last k, a list = those."""
        if self.structure != "ladder":
            return frozenset()
        ll = self.ladder_layers
        if ll is None:
            return frozenset(range(self.n_layers))
        if isinstance(ll, int) and not isinstance(ll, bool):
            if not 0 <= ll <= self.n_layers:
                raise ValueError(f"ModelConfig.ladder_layers as an int means 'the last k layers', 0 <= k <= {self.n_layers}, got {ll}")
            return frozenset(range(self.n_layers - ll, self.n_layers))
        if isinstance(ll, (list, tuple)) and all(isinstance(i, int) and 0 <= i < self.n_layers for i in ll):
            return frozenset(ll)
        raise ValueError(f"ModelConfig.ladder_layers must be None (all), an int k (the last k) or a list of layer "
                         f"indices in [0, {self.n_layers}), got {ll!r}")

    def mixer_specs(self) -> list[tuple[str, dict]]:
        """(mixer name, kwargs) for each layer."""
        if self.layer_mixers is None:
            return [(self.mixer, dict(self.mixer_kwargs))] * self.n_layers
        if not isinstance(self.layer_mixers, (list, tuple)) or len(self.layer_mixers) != self.n_layers:
            raise ValueError(f"ModelConfig.layer_mixers must be a list of n_layers={self.n_layers} entries, got {self.layer_mixers!r}")
        out = []
        for i, e in enumerate(self.layer_mixers):
            if isinstance(e, str):
                out.append((e, dict(self.mixer_kwargs) if e == self.mixer else {}))
            elif isinstance(e, dict) and set(e) <= {"mixer", "mixer_kwargs"} and "mixer" in e:
                out.append((e["mixer"], dict(e.get("mixer_kwargs") or {})))
            else:
                raise ValueError(f"ModelConfig.layer_mixers[{i}] must be a mixer name or "
                                 f"{{'mixer': name, 'mixer_kwargs': {{...}}}}, got {e!r}")
        return out

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ValueError(f"ModelConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            import difflib

            hints = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
            msg = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
            raise ValueError(f"ModelConfig: unknown field(s) {msg}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        return cls.from_dict(json.loads(s))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, s: str) -> "ModelConfig":
        import yaml

        return cls.from_dict(yaml.safe_load(s))

    def replace(self, **changes) -> "ModelConfig":
        return self.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            import difflib

            close = difflib.get_close_matches(name, PRESETS, n=3)
            raise ValueError(f"unknown preset {name!r}" + (f"; did you mean {close}?" if close else f"; presets: {sorted(PRESETS)}"))
        return PRESETS[name].replace(**overrides) if overrides else PRESETS[name].replace()


def register_preset(config: ModelConfig) -> ModelConfig:
    if config.name in PRESETS:
        raise ValueError(f"preset {config.name!r} already registered")
    PRESETS[config.name] = config
    return config
