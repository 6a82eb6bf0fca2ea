"""``parazoo bench ops``: forward and forward+backward time and peak extra memory of every op,
each backend, against its sequential reference; plus registers/spills of every Triton kernel.

Cases come from ``parazoo.recipes.bench.op_cases.<op>.cases(quick)``. Each (case, backend)
runs in a fresh subprocess. Peak extra memory: on CUDA the allocator's peak; on CPU the growth of
the peak RSS (reset through /proc/self/clear_refs) during one call after a warm-up call, with the
heap's free memory handed back to the OS first (malloc_trim) so that reused memory counts too.

Timing: after a warm-up, forward and forward+backward calls alternate (``--repeats`` pairs) and
each is reported as its median; ``fwd+bwd / fwd`` is the median of the per-pair ratios, so a
machine whose speed drifts between the two phases cannot skew it.

CPU allocator: by default the subprocess runs with a steady allocator: PyTorch's CPU allocator asks
for transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``) and glibc keeps freed memory
(``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``), as a caching allocator would. With glibc's
defaults every call's fresh outputs come back from the kernel as new 4 KB pages, and on a VM the
page faults alone can cost more than the op (linear_scan's 128 MB output: 32,769 faults, 95 ->
52 ms). ``--default-malloc`` measures that way.

    parazoo bench ops [--quick] [--ops selective_scan,ssd] [--backends cpu,reference]
                      [--device cpu|cuda] [--ref-backward] [--kernels] [--default-malloc] [--out results.json]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import statistics
import sys

import torch

from ._measure import markdown_table, peak_extra_mb, run_isolated, time_call, time_pairs


def _load_cases(quick: bool, only: set[str] | None):
    import parazoo.recipes.bench.op_cases as pkg

    out = []
    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if only and m.name not in only:
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{m.name}")
        for i, c in enumerate(mod.cases(quick)):
            out.append((m.name, i, c))
    return out


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def measure_one(p: dict) -> dict:
    """Subprocess body: time one case on one backend."""
    mod = importlib.import_module(f"parazoo.recipes.bench.op_cases.{p['module']}")
    case = mod.cases(p["quick"])[p["index"]]
    device = torch.device(p["device"])
    torch.manual_seed(0)
    inputs = {k: (v.detach().to(device).requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v)
              for k, v in case.make().items()}
    backend = p["backend"]
    res = {}
    cuda = device.type == "cuda"

    def fwd():
        with torch.no_grad():
            return case.run(inputs, backend)

    def clear_grads():
        for v in inputs.values():
            if isinstance(v, torch.Tensor):
                v.grad = None

    def fwdbwd():
        clear_grads()
        y = _first(case.run(inputs, backend))
        y.float().sum().backward()

    fwd()                                   # warm-up: imports and compiles are not the op's memory
    res["fwd_peak_mb"] = peak_extra_mb(fwd, cuda)
    if not (case.grad and p["backward"]):
        res["fwd_s"] = time_call(fwd, repeats=p["repeats"])
        return res
    fwdbwd()
    res["fwdbwd_peak_mb"] = peak_extra_mb(fwdbwd, cuda, before=clear_grads)  # last grads freed before the call
    tf, tfb = time_pairs(fwd, fwdbwd, repeats=p["repeats"])
    res["fwd_s"], res["fwdbwd_s"] = statistics.median(tf), statistics.median(tfb)
    res["fwdbwd_over_fwd"] = round(statistics.median([b / a for a, b in zip(tf, tfb)]), 2)
    return res


def kernel_table() -> list[dict]:
    from parazoo.ops._triton_aot import collect_specs, compile_specs

    specs = collect_specs()
    return [{"kernel": r["id"], "target": f"sm_{r['cap']}", "ok": r["ok"], "registers": r.get("registers"),
             "spill_stores": r.get("spill_stores"), "spill_loads": r.get("spill_loads"), "shared_bytes": r.get("shared")}
            for r in compile_specs(specs, caps=(80, 90))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="parazoo bench ops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, slow references skipped")
    ap.add_argument("--ops", default="", help="comma-separated op modules (default: all)")
    ap.add_argument("--backends", default="", help="comma-separated backends (default: each case's list)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ref-backward", action="store_true", help="also time the reference's backward when it is slow")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kernels", action="store_true", help="also report ptxas registers/spills (sm_80, sm_90) per Triton kernel")
    ap.add_argument("--default-malloc", action="store_true",
                    help="CPU: glibc's default trimming (fresh outputs page-fault on every call) instead of keeping freed memory")
    ap.add_argument("--out", default="", help="write results as JSON here")
    args = ap.parse_args(argv)
    env = None if args.default_malloc else {**os.environ, **STEADY_ALLOCATOR}
    only = set(filter(None, args.ops.split(","))) or None
    want = set(filter(None, args.backends.split(","))) or None
    rows = []
    for module, idx, case in _load_cases(args.quick, only):
        ref_time = None
        for backend in case.backends:
            if want and backend not in want:
                continue
            if backend == "triton" and args.device != "cuda":
                continue  # Triton on CPU is the interpreter: a correctness tool, not a benchmark
            if backend.startswith("cpu-") and args.device != "cpu":
                continue  # variants of the CPU path (e.g. selective_scan's cpu-rows) time CPU tensors only
            slow_ref = backend == "reference" and case.slow_reference
            if slow_ref and args.quick:
                continue
            payload = dict(module=module, index=idx, quick=args.quick, device=args.device, backend=backend,
                           repeats=1 if backend == "reference" else args.repeats,
                           backward=not (slow_ref and not args.ref_backward))
            r = run_isolated("parazoo.recipes.bench.ops", "measure_one", payload, env=env)
            row = {"op": case.op, "shape": case.shape, "backend": backend, **r}
            if backend == "reference" and "fwd_s" in r:
                ref_time = r["fwd_s"]
            rows.append(row)
            print(f"  {case.op:<24} {case.shape:<34} {backend:<10} " +
                  (r.get("error", "").splitlines()[-1] if "error" in r else
                   f"fwd {r['fwd_s'] * 1e3:9.2f} ms  fwd+bwd {r.get('fwdbwd_s', float('nan')) * 1e3:9.2f} ms  "
                   f"peak {r.get('fwdbwd_peak_mb', r.get('fwd_peak_mb'))} MB"), flush=True)
        for row in rows:
            if row["op"] == case.op and row["shape"] == case.shape and ref_time and "fwd_s" in row:
                row["fwd_speedup_vs_ref"] = round(ref_time / row["fwd_s"], 1)
            if row["op"] == case.op and row["shape"] == case.shape and case.copy_bytes and "fwd_s" in row:
                # time of one memory copy of inputs and outputs, measured here
                row["fwd_vs_copy"] = round(row["fwd_s"] / _copy_time(case.copy_bytes), 2)
    for r in rows:
        for k in ("fwd_s", "fwdbwd_s"):
            if r.get(k) is not None:
                r[k.replace("_s", "_ms")] = round(r[k] * 1e3, 2)
    cols = [("op", "op"), ("shape", "shape"), ("backend", "backend"), ("fwd_ms", "fwd ms"), ("fwdbwd_ms", "fwd+bwd ms"),
            ("fwd_peak_mb", "fwd peak MB"), ("fwdbwd_peak_mb", "fwd+bwd peak MB"), ("fwd_speedup_vs_ref", "fwd x ref"),
            ("fwdbwd_over_fwd", "fwd+bwd / fwd"), ("fwd_vs_copy", "fwd / memcpy")]
    print()
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"malloc: {'glibc defaults' if args.default_malloc else 'freed memory kept'}")
    print(markdown_table(rows, cols))
    result = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "malloc": "default" if args.default_malloc else "keep", "rows": rows}
    if args.kernels:
        kt = kernel_table()
        print()
        print(markdown_table(kt, [("kernel", "Triton kernel"), ("target", "target"), ("registers", "regs/thread"),
                                  ("spill_stores", "spill stores (B)"), ("spill_loads", "spill loads (B)"),
                                  ("shared_bytes", "shared (B)")]))
        result["kernels"] = kt
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


# PyTorch's CPU allocator asks for transparent huge pages (>= 2 MB blocks: one fault per 2 MB, not per 4 KB);
# glibc keeps freed memory (no trimming of the heap top; blocks up to 32 MB from the heap, not fresh mmaps)
STEADY_ALLOCATOR = {"THP_MEM_ALLOC_ENABLE": "1", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_MMAP_THRESHOLD_": str(2**25)}

_COPY_CACHE: dict = {}


def _copy_time(nbytes: int) -> float:
    if nbytes not in _COPY_CACHE:
        src = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
        dst = torch.empty_like(src)
        _COPY_CACHE[nbytes] = time_call(lambda: dst.copy_(src), repeats=5)
    return _COPY_CACHE[nbytes]


if __name__ == "__main__":
    sys.exit(main())
