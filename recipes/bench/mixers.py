"""``parazoo bench mixers``: training throughput and decode latency of every registered mixer.

Training: forward + backward of one mixer on (batch, T, d_model) (default 1 x {2048, 8192} x 768),
reported as tokens/s, with the peak extra memory of the first forward+backward (CUDA allocator
peak, or on CPU the growth of peak RSS in a fresh subprocess per case).
Decoding: latency of one token step from a state that has seen ``context`` tokens (default 1k and
16k). Recurrent mixers prefill their state with one forward over ``context`` tokens; attention gets
a KV cache of that length filled with random keys/values (decode latency does not depend on the
values, and an O(context^2) prefill would dominate the benchmark). Each step starts from the same
state, so the context stays fixed; median and minimum over at least 50 steps (the minimum is the
steadier figure on a shared, loaded CPU). The mixers' defaults are the papers' (``MIXERS[name](d_model)``).

    parazoo bench mixers [--quick] [--mixers mamba,retnet] [--lens 2048,8192] [--contexts 1024,16384]
                         [--d-model 768] [--batch 1] [--device cpu|cuda] [--threads N] [--repeats 3]
                         [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from ._measure import markdown_table, peak_extra_mb, run_isolated, time_call


def _build(p: dict, device):
    from parazoo.arch import MIXERS

    if p.get("threads"):
        torch.set_num_threads(p["threads"])
    torch.manual_seed(0)
    return MIXERS[p["mixer"]](p["d_model"]).to(device)


def measure_train(p: dict) -> dict:
    """Subprocess body: forward+backward tokens/s and peak extra memory of one mixer at one T."""
    device = torch.device(p["device"])
    cuda = device.type == "cuda"
    m = _build(p, device).train()
    x = torch.randn(p["batch"], p["T"], p["d_model"], device=device, requires_grad=True)

    def step():
        m.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = m(x)
        y.float().square().mean().backward()

    step()  # warm-up: one-time compiles and imports are not the mixer's memory
    peak = peak_extra_mb(step, cuda)
    s = time_call(step, repeats=p["repeats"], warmup=0, budget_s=p["budget_s"])
    return {"fwdbwd_s": s, "tokens_per_s": round(p["batch"] * p["T"] / s, 1), "peak_mb": peak}


def _populate_state(m, p: dict, device):
    B, C, d = p["batch"], p["context"], p["d_model"]
    if p["mixer"] == "attention":
        shape = (B, m.n_kv_heads, C, m.head_dim)
        return {"k": torch.randn(shape, device=device), "v": torch.randn(shape, device=device), "pos": C}
    _, st = m(torch.randn(B, C, d, device=device))
    return st


def measure_decode(p: dict) -> dict:
    """Subprocess body: per-token decode latency from a state at ``context`` tokens."""
    device = torch.device(p["device"])
    m = _build(p, device).eval()
    with torch.no_grad():
        st = _populate_state(m, p, device)
        x1 = torch.randn(p["batch"], 1, p["d_model"], device=device)
        for _ in range(5):
            m(x1, st)
        times = []
        for _ in range(max(50, p["repeats"])):  # one step is cheap and a shared CPU is noisy
            t0 = time.perf_counter()
            m(x1, st)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {"decode_ms": round(statistics.median(times) * 1e3, 3), "decode_min_ms": round(min(times) * 1e3, 3)}


def main(argv=None) -> int:
    from parazoo.arch import MIXERS

    ap = argparse.ArgumentParser(prog="parazoo bench mixers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="T 512/2048, contexts 256/2048, d_model 256: a fast subset")
    ap.add_argument("--mixers", default="", help=f"comma-separated mixer names (default: all of {sorted(MIXERS)})")
    ap.add_argument("--lens", default="", help="training lengths T (default 2048,8192)")
    ap.add_argument("--contexts", default="", help="decode contexts (default 1024,16384)")
    ap.add_argument("--d-model", type=int, default=None, help="default 768 (256 with --quick)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads per case (default: torch's); 1 is steadier on a shared, loaded machine")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=60.0, help="stop repeating a case after this many seconds")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--out", default="", help="write results as JSON here")
    args = ap.parse_args(argv)
    names = [n for n in args.mixers.split(",") if n] or sorted(MIXERS)
    unknown = [n for n in names if n not in MIXERS]
    if unknown:
        print(f"parazoo bench mixers: unknown mixer(s) {unknown}; registered: {sorted(MIXERS)}", file=sys.stderr)
        return 2
    lens = [int(v) for v in args.lens.split(",") if v] or ([512, 2048] if args.quick else [2048, 8192])
    contexts = [int(v) for v in args.contexts.split(",") if v] or ([256, 2048] if args.quick else [1024, 16384])
    d_model = args.d_model or (256 if args.quick else 768)
    common = dict(d_model=d_model, batch=args.batch, device=args.device, repeats=args.repeats, budget_s=args.budget_s,
                  threads=args.threads)
    here = "parazoo.recipes.bench.mixers"

    train_rows, decode_rows = [], []
    for name in names:
        if not args.no_train:
            for T in lens:
                r = run_isolated(here, "measure_train", dict(common, mixer=name, T=T))
                train_rows.append({"mixer": name, "T": T, **r})
                print(f"  train  {name:<10} T={T:<6} " + (r["error"].splitlines()[-1] if "error" in r else
                      f"{r['tokens_per_s']:>10.1f} tok/s  fwd+bwd {r['fwdbwd_s'] * 1e3:9.1f} ms  peak {r['peak_mb']} MB"),
                      flush=True)
        if not args.no_decode:
            row = {"mixer": name}
            for C in contexts:
                r = run_isolated(here, "measure_decode", dict(common, mixer=name, context=C))
                row[f"decode_ms@{C}"] = r.get("decode_ms")
                row[f"decode_min_ms@{C}"] = r.get("decode_min_ms")
                if "error" in r:
                    row[f"error@{C}"] = r["error"]
                print(f"  decode {name:<10} ctx={C:<6} " + (r["error"].splitlines()[-1] if "error" in r else
                      f"{r['decode_ms']:9.3f} ms/token (median), {r['decode_min_ms']:9.3f} (min)"), flush=True)
            for key in ("decode_ms", "decode_min_ms"):
                a, b = row.get(f"{key}@{contexts[0]}"), row.get(f"{key}@{contexts[-1]}")
                if a and b:
                    row[key.replace("decode", "growth")] = round(b / a, 2)
            decode_rows.append(row)

    # ratios to attention at the same T (training speed-up goal at the longest T)
    att = {r["T"]: r.get("tokens_per_s") for r in train_rows if r["mixer"] == "attention"}
    for r in train_rows:
        if att.get(r["T"]) and r.get("tokens_per_s"):
            r["x_attention"] = round(r["tokens_per_s"] / att[r["T"]], 2)
    print()
    threads = args.threads or torch.get_num_threads()
    print(f"device: {args.device}, torch {torch.__version__}, threads {threads}, d_model {d_model}, "
          f"batch {args.batch}")
    if train_rows:
        print(markdown_table(train_rows, [("mixer", "mixer"), ("T", "T"), ("tokens_per_s", "fwd+bwd tokens/s"),
                                          ("x_attention", "x attention"), ("peak_mb", "peak MB")]))
    if decode_rows:
        print()
        cols = [("mixer", "mixer")] + [(f"decode_ms@{C}", f"median ms/token @ {C}") for C in contexts] + \
               [("growth_ms", f"median {contexts[-1]} / {contexts[0]}")] + \
               [(f"decode_min_ms@{C}", f"min ms/token @ {C}") for C in contexts] + \
               [("growth_min_ms", f"min {contexts[-1]} / {contexts[0]}")]
        print(markdown_table(decode_rows, cols))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": args.device, "torch": torch.__version__, "threads": threads,
                       "d_model": d_model, "batch": args.batch, "train": train_rows, "decode": decode_rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
