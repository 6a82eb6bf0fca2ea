"""Parallelism-aware structures: properties of the model that work with any mixer.

Modules f_1 .. f_M alternate mixer and MLP (a block with mlp="none" contributes only its mixer).

Standard residual:  h_i = h_{i-1} + f_i(h_{i-1}).

Ladder residual (2025): h_i = h_{i-1} + f_i(h_{i-2}),  h_{-1} = h_0 = embedding: module i reads
the stream without module i-1's output (so module i never waits for i-1's all-reduce); after the
last module its output is added before the final norm. ``ladder_layers`` picks the laddered
layers (both modules of a laddered layer read the stream that lacks the previous module's
output); ``ladder_layers=[]`` is exactly the standard model.

Kraken (NeurIPS 2024): N sub-stacks ("splits") with their own residual streams x_i. Layer 1 is a
standard pre-norm block per split on the shared embedding. Layer l >= 2:
    a_i = x_i + Mixer_i(LN1(x_i));   u_i = a_i + sum_{j != i} x_j^(l-1);   x_i^l = a_i + FFN_i(LN2(u_i))
Other splits enter only the FFN input, never the residual. Output: Linear(N d -> d) of the
concatenated splits, then the final norm and head.

ParScale (Qwen 2025): P streams share every weight. The input is replicated stream-major
((P B), T, d) and each stream s has its own learned initial state per mixer (for attention:
prefix keys/values of n_prefix tokens, unrotated; for a recurrent mixer: its initial state).
After the final norm: w = softmax(MLP([h_1 .. h_P])) in float32 with MLP = Linear(P d -> d),
SiLU, Linear(d -> P); w <- w (1 - eps) + eps / P; y = sum_p w_p h_p. P = 1 is the base model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SequentialTrunk", "KrakenTrunk", "ParScale", "build_trunk"]


class SequentialTrunk(nn.Module):
    """Standard and ladder residual streams over one stack of blocks."""

    def __init__(self, config, block_cls):
        super().__init__()
        self.blocks = nn.ModuleList(block_cls(config, i) for i in range(config.n_layers))
        self.laddered = config.ladder_layer_set()
        self.comm = None  # set by tensor_parallel(): all-reduces module outputs (async for ladder)

    def mixers(self) -> list:
        return [b.mixer for b in self.blocks]

    def init_state(self, batch_size, device=None, dtype=None) -> list:
        return [b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks]

    def init_state_none(self) -> list:
        return [None] * len(self.blocks)

    def flatten_state(self, states: list) -> list:
        return list(states)

    def unflatten_state(self, flat: list) -> list:
        return list(flat)

    def _module(self, h, pending, laddered: bool, f, partial: bool):
        """One residual module. Returns (stream, this module's pending output, extra).

        Under tensor parallelism a sharded module's output is a partial sum: its all-reduce is
        started here and waited only when the output is added to the stream, which for a
        laddered module is after the next module has run (the overlap the ladder buys)."""
        if laddered:
            out, extra = f(h)                 # reads h_{i-2}: the previous output is still pending
            h = h if pending is None else h + self._wait(pending)
        else:
            h = h if pending is None else h + self._wait(pending)
            out, extra = f(h)
        if partial and self.comm is not None:
            out = self.comm.start(out)
        return h, out, extra

    def _wait(self, pending):
        return pending if isinstance(pending, torch.Tensor) else self.comm.wait(pending)

    def forward(self, h: torch.Tensor, states: list):
        pending = None
        new_states = []
        for i, blk in enumerate(self.blocks):
            lad = i in self.laddered
            h, pending, s = self._module(h, pending, lad, lambda x: blk.mix(x, states[i]), blk.tp_mix_partial)
            new_states.append(s)
            if blk.mlp is not None:
                h, pending, _ = self._module(h, pending, lad, lambda x: (blk.ffn(x), None), blk.tp_ffn_partial)
        if pending is not None:
            h = h + self._wait(pending)
        return h, new_states


class KrakenTrunk(nn.Module):
    """N full-width sub-stacks exchanging information only through the FFN inputs."""

    def __init__(self, config, block_cls):
        super().__init__()
        self.n_splits = n = config.kraken_splits
        self.layers = nn.ModuleList(nn.ModuleList(block_cls(config, l) for _ in range(n)) for l in range(config.n_layers))
        self.out_proj = nn.Linear(n * config.d_model, config.d_model, bias=False)
        self.local_splits = list(range(n))  # tensor_parallel() keeps only this rank's splits
        self.comm = None

    def mixers(self) -> list:
        return [layer[i].mixer for layer in self.layers for i in self.local_splits]

    def init_state(self, batch_size, device=None, dtype=None) -> list:
        return [[layer[i].mixer.init_state(batch_size, device=device, dtype=dtype) if i in self.local_splits else None
                 for i in range(self.n_splits)] for layer in self.layers]

    def init_state_none(self) -> list:
        return [[None] * self.n_splits for _ in self.layers]

    def flatten_state(self, states: list) -> list:
        return [layer[i] for layer in states for i in self.local_splits]

    def unflatten_state(self, flat: list) -> list:
        it = iter(flat)
        return [[next(it) if i in self.local_splits else None for i in range(self.n_splits)] for _ in self.layers]

    def forward(self, h: torch.Tensor, states: list):
        comm, idx = self.comm, self.local_splits
        if comm is not None:
            h = comm.copy_in(h)  # every split reads the embedding: its gradient sums over ranks
        xs = {i: h for i in idx}
        new_states = []
        for l, layer in enumerate(self.layers):
            layer_states = [None] * self.n_splits
            if l == 0:  # no exchange in the first layer
                for i in idx:
                    xs[i], layer_states[i] = layer[i](xs[i], states[l][i])
            else:
                # one all-reduce of the previous layer's outputs, overlapped with the mixers
                local_sum = torch.stack([xs[i] for i in idx]).sum(0)
                handle = comm.start_sum(local_sum) if comm is not None else local_sum
                a = {}
                for i in idx:
                    y, layer_states[i] = layer[i].mix(xs[i], states[l][i])
                    a[i] = xs[i] + y
                total = comm.wait(handle) if comm is not None else handle
                xs = {i: a[i] + layer[i].ffn(a[i] + (total - xs[i])) for i in idx}
            new_states.append(layer_states)
        out = self.out_proj(torch.cat([xs[i] for i in idx], dim=-1))
        if comm is not None:
            out = comm.wait(comm.start(out))  # row-parallel out_proj
        return out, new_states


def build_trunk(config, block_cls) -> nn.Module:
    if config.structure == "kraken":
        return KrakenTrunk(config, block_cls)
    return SequentialTrunk(config, block_cls)


class ParScale(nn.Module):
    """P weight-sharing streams: learned per-stream initial states and the output aggregator."""

    def __init__(self, config, mixers: list):
        super().__init__()
        self.P, self.eps, d = config.parscale_n, float(config.parscale_eps), config.d_model
        self.prefix = nn.ModuleList()
        self._static: list[dict] = []  # non-tensor entries (counters) of each template state
        for m in mixers:
            if hasattr(m, "learnable_prefix"):
                template = m.learnable_prefix(self.P, config.parscale_prefix)
            else:
                template = m.init_state(self.P, dtype=torch.float32)
            if not isinstance(template, dict):
                raise ValueError(f"ParScale: mixer {type(m).__name__} state must be a dict to learn per-stream states")
            params = nn.ParameterDict()
            static = {}
            for k, v in template.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    params[k] = nn.Parameter(torch.randn(v.shape, device=v.device) * config.init_std)
                else:
                    static[k] = v
            self.prefix.append(params)
            self._static.append(static)
        self.aggregator = nn.Sequential(nn.Linear(self.P * d, d), nn.SiLU(), nn.Linear(d, self.P))

    def initial_states(self, batch_size: int, dtype) -> list:
        """Flat list of mixer states for (P B) stream-major rows: row p B + b is stream p."""
        out = []
        for params, static in zip(self.prefix, self._static):
            s = {k: p.to(dtype).repeat_interleave(batch_size, dim=0) for k, p in params.items()}
            s.update({k: (v.repeat_interleave(batch_size, dim=0) if isinstance(v, torch.Tensor) else v)
                      for k, v in static.items()})
            out.append(s)
        return out

    def replicate(self, h: torch.Tensor) -> torch.Tensor:
        return h.repeat(self.P, 1, 1)  # (B, T, d) -> (P B, T, d), stream-major

    def aggregate(self, h: torch.Tensor) -> torch.Tensor:
        """(P B, T, d) -> (B, T, d): softmax-weighted sum of the streams, in float32 (float64 for a
        float64 model)."""
        PB, T, d = h.shape
        B = PB // self.P
        hs = h.view(self.P, B, T, d)
        lin1, act, lin2 = self.aggregator
        cdt = torch.float64 if h.dtype == torch.float64 else torch.float32  # at least float32
        with torch.autocast(device_type=h.device.type, enabled=False):
            cat = hs.permute(1, 2, 0, 3).reshape(B, T, self.P * d).to(cdt)
            w = torch.softmax(F.linear(act(F.linear(cat, lin1.weight.to(cdt), lin1.bias.to(cdt))),
                                       lin2.weight.to(cdt), lin2.bias.to(cdt)), dim=-1)  # (B, T, P)
            w = w * (1 - self.eps) + self.eps / self.P
            y = torch.einsum("btp,pbtd->btd", w, hs.to(cdt))
        return y.to(h.dtype)
