"""Tensor parallelism over torch.distributed (gloo on CPU, nccl on GPU), for every structure.

``tensor_parallel(model, process_group=None)`` shards a LanguageModel in place:

* standard: Megatron-style. Attention heads (query and key/value heads) and MLP hidden units are
  split over ranks: q/k/v and gate/up/fc1 are column-parallel, o_proj and down/fc2 row-parallel.
  A sharded branch reads its input through f (identity forward, all-reduce of the gradient) and
  its output is a partial sum all-reduced by g (all-reduce forward, identity backward): two
  all-reduces per layer. Mixers other than attention are replicated (every rank computes them
  whole; their output needs no all-reduce).
* ladder: the same sharding; each all-reduce is launched asynchronously and waited one module
  later, when the output joins the residual stream, so it overlaps the next module's compute.
* kraken: whole splits are placed on ranks (kraken_splits divisible by the world size). The
  previous layer's outputs are summed by one asynchronous all-reduce per layer, launched before
  and overlapped with the next layer's mixers; the final Linear(N d -> d) is row-parallel.

Row-parallel biases are added on rank 0 only (their gradient is all-reduced so replicas agree).
``CommStats`` on ``model.tp_comm`` records the time spent waiting for all-reduces.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .attention import Attention
from .mlp import GeluMLP, SwiGLU
from .structures import KrakenTrunk, SequentialTrunk

__all__ = ["tensor_parallel", "Comm"]


class _CopyToTP(torch.autograd.Function):
    """f: identity forward, all-reduce(sum) of the gradient backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class _StartReduce(torch.autograd.Function):
    """g, first half: start an all-reduce(sum) of a partial output; identity backward."""

    @staticmethod
    def forward(ctx, x, comm):
        y = x.detach().contiguous().clone()
        comm._last_work = dist.all_reduce(y, group=comm.group, async_op=True)
        return y

    @staticmethod
    def backward(ctx, g):
        return g, None


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks of per-rank tensors: all-reduce forward and backward (Kraken's exchange)."""

    @staticmethod
    def forward(ctx, x, comm):
        ctx.comm = comm
        y = x.detach().contiguous().clone()
        comm._last_work = dist.all_reduce(y, group=comm.group, async_op=True)
        return y

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g, group=ctx.comm.group)
        return g, None


class Comm:
    """All-reduce launcher for a structure: start() returns a handle, wait() the reduced tensor.
    ``wait_seconds`` accumulates the time spent blocked in wait() (communication not hidden)."""

    def __init__(self, group):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.wait_seconds = 0.0
        self.n_reduces = 0
        self._last_work = None

    def copy_in(self, x):
        return _CopyToTP.apply(x, self.group)

    def start(self, partial: torch.Tensor):
        y = _StartReduce.apply(partial, self)
        self.n_reduces += 1
        return (y, self._last_work)

    def start_sum(self, x: torch.Tensor):
        y = _AllReduceSum.apply(x, self)
        self.n_reduces += 1
        return (y, self._last_work)

    def wait(self, handle) -> torch.Tensor:
        y, work = handle
        t0 = time.perf_counter()
        work.wait()
        self.wait_seconds += time.perf_counter() - t0
        return y

    def reset_stats(self):
        self.wait_seconds, self.n_reduces = 0.0, 0


def _shard_rows(w: torch.Tensor, rank: int, world: int, unit: int = 1) -> torch.Tensor:
    """Rows [rank*n/world, (rank+1)*n/world) of w, in whole units (heads) of ``unit`` rows."""
    n = w.shape[0] // unit
    if n % world:
        raise ValueError(f"tensor_parallel: {n} units (heads / hidden units) do not divide over {world} ranks")
    k = n // world
    return w[rank * k * unit:(rank + 1) * k * unit].clone()


class RowParallelLinear(nn.Module):
    """y_partial = x_local W_local^T (+ bias on rank 0 only); the structure all-reduces y."""

    def __init__(self, lin: nn.Linear, comm: Comm):
        super().__init__()
        k = lin.in_features // comm.world
        self.weight = nn.Parameter(lin.weight.detach()[:, comm.rank * k:(comm.rank + 1) * k].clone())
        self.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().clone())
        self.comm = comm
        self.in_features, self.out_features = k, lin.out_features

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.bias is not None:
            b = self.comm.copy_in(self.bias)  # gradient all-reduced: every replica gets rank 0's
            y = y + b * (1.0 if self.comm.rank == 0 else 0.0)
        return y


def _column(lin: nn.Linear, comm: Comm, unit: int = 1) -> nn.Linear:
    w = _shard_rows(lin.weight.detach(), comm.rank, comm.world, unit)
    new = nn.Linear(lin.in_features, w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(_shard_rows(lin.bias.detach()[:, None], comm.rank, comm.world, unit)[:, 0])
    return new


def _shard_attention(a: Attention, comm: Comm) -> None:
    if a.n_heads % comm.world or a.n_kv_heads % comm.world:
        raise ValueError(f"tensor_parallel: attention heads ({a.n_heads} query, {a.n_kv_heads} key/value) must be "
                         f"divisible by the world size {comm.world}")
    hd = a.head_dim
    a.q_proj = _column(a.q_proj, comm, hd)
    a.k_proj = _column(a.k_proj, comm, hd)
    a.v_proj = _column(a.v_proj, comm, hd)
    a.o_proj = RowParallelLinear(a.o_proj, comm)
    a.n_heads //= comm.world
    a.n_kv_heads //= comm.world


def _shard_mlp(m: nn.Module, comm: Comm) -> None:
    if isinstance(m, SwiGLU):
        m.gate_proj = _column(m.gate_proj, comm)
        m.up_proj = _column(m.up_proj, comm)
        m.down_proj = RowParallelLinear(m.down_proj, comm)
    elif isinstance(m, GeluMLP):
        m.fc1 = _column(m.fc1, comm)
        m.fc2 = RowParallelLinear(m.fc2, comm)
    else:  # pragma: no cover
        raise ValueError(f"tensor_parallel: cannot shard MLP {type(m).__name__}")


class _RemoteSplit(nn.Module):
    """Placeholder for a Kraken split that lives on another rank."""

    mixer = None


def tensor_parallel(model, process_group=None):
    """Shard ``model`` (a LanguageModel) in place over ``process_group`` (default: the world)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("tensor_parallel: torch.distributed is not initialised (call dist.init_process_group first)")
    if getattr(model, "tp_comm", None) is not None:
        raise ValueError("tensor_parallel: model is already sharded")
    comm = Comm(process_group)
    trunk = model.trunk
    ps = model.parscale
    owners = trunk.mixers()  # ParScale's learned states follow this order
    if isinstance(trunk, SequentialTrunk):
        for blk in trunk.blocks:
            blk.tp_in = comm.copy_in
            if isinstance(blk.mixer, Attention):
                _shard_attention(blk.mixer, comm)
                blk.tp_mix_partial = True
            if blk.mlp is not None:
                _shard_mlp(blk.mlp, comm)
                blk.tp_ffn_partial = True
        trunk.comm = comm
    elif isinstance(trunk, KrakenTrunk):
        n = trunk.n_splits
        if n % comm.world:
            raise ValueError(f"tensor_parallel: kraken_splits={n} must be divisible by the world size {comm.world}")
        k = n // comm.world
        local = list(range(comm.rank * k, (comm.rank + 1) * k))
        for layer in trunk.layers:
            for j in range(n):
                if j not in local:
                    layer[j] = _RemoteSplit()
        trunk.local_splits = local
        # out_proj over the concatenated splits: keep this rank's column block, row-parallel
        d = trunk.out_proj.out_features
        w = trunk.out_proj.weight.detach()[:, local[0] * d:(local[-1] + 1) * d]
        lin = nn.Linear(w.shape[1], d, bias=False, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
        trunk.out_proj = lin
        trunk.comm = comm
    else:  # pragma: no cover
        raise ValueError(f"tensor_parallel: unsupported trunk {type(trunk).__name__}")
    if ps is not None:
        _shard_parscale(ps, owners, trunk, comm)
    model.tp_comm = comm
    return model


def _shard_parscale(ps, owners: list, trunk, comm: Comm) -> None:
    """Keep the learned stream states of this rank's mixers; attention prefixes split by KV head."""
    kept = set(map(id, trunk.mixers()))
    prefix, static = nn.ModuleList(), []
    for m, params, st in zip(owners, ps.prefix, ps._static):
        if id(m) not in kept:
            continue  # a Kraken split on another rank
        if isinstance(m, Attention) and trunk.comm is not None and isinstance(trunk, SequentialTrunk):
            for k in ("k", "v"):
                full = params[k].detach()  # (P, H_kv, n_prefix, D)
                h = full.shape[1] // comm.world
                params[k] = nn.Parameter(full[:, comm.rank * h:(comm.rank + 1) * h].clone())
        prefix.append(params)
        static.append(st)
    ps.prefix, ps._static = prefix, static
