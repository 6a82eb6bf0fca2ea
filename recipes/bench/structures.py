"""``parazoo bench structures``: what the parallelism-aware structures cost and save.

1. Tensor parallelism over 2 gloo processes on this machine: forward latency at batch 1 for
   standard vs ladder vs kraken at (nearly) equal parameters, and the time each forward spends
   blocked waiting for all-reduces (communication not hidden by compute). Single-process
   latency of the same models for reference.
2. ParScale (parallel scaling) vs parameter scaling: parameters, decode-state memory and
   per-token decode latency at batch 1 for P in {1, 2, 4, 8} over a small base, next to the base
   scaled to 2x and 4x parameters.

    parazoo bench structures [--quick] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from ._measure import markdown_table


def _cfg(**kw):
    from parazoo.arch import ModelConfig

    base = dict(vocab_size=256, d_model=512, n_layers=8, mixer="attention", mixer_kwargs={"n_heads": 8},
                mlp="swiglu", max_seq_len=4096)
    base.update(kw)
    return ModelConfig(**base)


def _n_params(cfg, exclude_embeddings=True) -> int:
    from parazoo.arch import LanguageModel

    with torch.device("meta"):
        return LanguageModel(cfg).num_parameters(exclude_embeddings=exclude_embeddings)


def _kraken_matching(target: int, splits: int, n_layers: int, n_heads: int):
    """Kraken config whose non-embedding parameter count is closest to ``target``."""
    best = None
    for d in range(n_heads * 8, 2048, n_heads * 2):
        c = _cfg(d_model=d, n_layers=n_layers, structure="kraken", kraken_splits=splits, mlp="gelu", d_ff=2 * d,
                 mixer_kwargs={"n_heads": n_heads})
        diff = abs(_n_params(c) - target)
        if best is None or diff < best[0]:
            best = (diff, c)
    return best[1]


def structure_configs(quick: bool) -> dict:
    layers = 4 if quick else 8
    std = _cfg(n_layers=layers)
    return {
        "standard": std,
        "ladder": _cfg(n_layers=layers, structure="ladder"),
        "kraken-2way": _kraken_matching(_n_params(std), 2, layers, 8),
    }


def _tp_worker(rank, world, init_file, cfgs, T, repeats, out_file):
    import torch.distributed as dist

    from parazoo.arch import LanguageModel, ModelConfig, tensor_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    res = {}
    ids = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(0))
    for name, d in cfgs.items():
        torch.manual_seed(0)
        model = tensor_parallel(LanguageModel(ModelConfig.from_dict(d)).eval())
        comm = model.tp_comm
        times, waits = [], []
        with torch.no_grad():
            model(ids)  # warm-up
            for _ in range(repeats):
                dist.barrier()
                comm.reset_stats()
                t0 = time.perf_counter()
                model(ids)
                times.append(time.perf_counter() - t0)
                waits.append(comm.wait_seconds)
        res[name] = {"fwd_ms": statistics.median(times) * 1e3, "allreduce_wait_ms": statistics.median(waits) * 1e3,
                     "allreduces": comm.n_reduces}
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(res, f)
    dist.destroy_process_group()


def bench_tp(quick: bool) -> list[dict]:
    import torch.multiprocessing as mp

    from parazoo.arch import LanguageModel

    cfgs = structure_configs(quick)
    T, repeats = (128, 3) if quick else (512, 5)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "res.json")
        mp.spawn(_tp_worker, args=(2, os.path.join(d, "init"), {k: c.to_dict() for k, c in cfgs.items()}, T, repeats, out),
                 nprocs=2, join=True)
        with open(out) as f:
            tp = json.load(f)
    rows = []
    torch.set_num_threads(2)
    ids = torch.randint(0, 256, (1, T))
    for name, c in cfgs.items():
        torch.manual_seed(0)
        m = LanguageModel(c).eval()
        with torch.no_grad():
            m(ids)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                m(ids)
                ts.append(time.perf_counter() - t0)
        r = tp[name]
        rows.append({"structure": name, "params (non-emb)": f"{_n_params(c) / 1e6:.2f}M", "T": T,
                     "1 process fwd ms": round(statistics.median(ts) * 1e3, 1),
                     "TP=2 fwd ms": round(r["fwd_ms"], 1), "all-reduces / fwd": r["allreduces"],
                     "blocked in all-reduce ms": round(r["allreduce_wait_ms"], 1),
                     "blocked %": round(100 * r["allreduce_wait_ms"] / r["fwd_ms"], 1)})
    return rows


def _decode_latency(model, context: int, steps: int) -> tuple[float, int]:
    ids = torch.randint(0, model.config.vocab_size, (1, context))
    with torch.no_grad():
        _, state = model(ids)
        tok = ids[:, -1:]
        model(tok, state)  # warm-up step
        t0 = time.perf_counter()
        for _ in range(steps):
            _, state = model(tok, state)
        dt = (time.perf_counter() - t0) / steps
    nbytes = 0
    for layer in state.layers:
        for v in (layer.values() if isinstance(layer, dict) else []):
            if isinstance(v, torch.Tensor):
                nbytes += v.numel() * v.element_size()
    return dt, nbytes


def bench_parscale(quick: bool) -> list[dict]:
    from parazoo.arch import LanguageModel

    torch.set_num_threads(2)
    d, L, ctx, steps = (256, 4, 256, 8) if quick else (384, 6, 1024, 16)
    base = dict(d_model=d, n_layers=L, mixer_kwargs={"n_heads": d // 64})
    variants = [(f"ParScale P={p}", _cfg(**base, parscale_n=p, parscale_prefix=48)) for p in (1, 2, 4, 8)]
    for mult in (2, 4):  # parameter scaling: width x sqrt(mult) (heads of 64), same depth
        dm = int(round(d * mult ** 0.5 / 64)) * 64
        variants.append((f"base x{mult} params", _cfg(d_model=dm, n_layers=L, mixer_kwargs={"n_heads": dm // 64})))
    rows = []
    for name, c in variants:
        torch.manual_seed(0)
        m = LanguageModel(c).eval()
        dt, state_bytes = _decode_latency(m, ctx, steps)
        rows.append({"model": name, "params": f"{m.num_parameters() / 1e6:.2f}M",
                     "weights MB": round(m.num_parameters() * 4 / 2**20, 1),
                     f"decode state MB @ {ctx}": round(state_bytes / 2**20, 2),
                     "decode ms/token": round(dt * 1e3, 2)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="parazoo bench structures", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-tp", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    result = {}
    if not args.skip_tp:
        rows = bench_tp(args.quick)
        print("Tensor parallel forward, batch 1, 2 gloo processes on this machine:")
        print(markdown_table(rows, [(k, k) for k in rows[0]]))
        result["tensor_parallel"] = rows
    rows = bench_parscale(args.quick)
    print("\nParScale vs parameter scaling, batch 1 decode:")
    print(markdown_table(rows, [(k, k) for k in rows[0]]))
    result["parscale"] = rows
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
