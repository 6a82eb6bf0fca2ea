"""``parazoo bench pararnn``: ParaGRU / ParaLSTM, parallel (Newton) vs sequential, forward+backward.

For each cell, batch x hidden in {1x64, 8x256} and T in {512, 2048, 8192}: time of the forward and
of forward+backward (loss = sum of states) through ``ParallelRNN`` in mode="parallel" (Newton,
implicit adjoint) and mode="sequential" (a PyTorch loop over the cell, BPTT by autograd), the
speed-up, and the Newton iterations used. Prints a table and writes JSON (``--out``).
``--quick`` runs a small subset. Times are medians over ``--repeats`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

SIZES = [(1, 64), (8, 256)]
LENGTHS = [512, 2048, 8192]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (compiles the fused scan kernels on first use)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run_case(kind: str, B: int, H: int, T: int, repeats: int, backend: str, chunk_size=None) -> dict:
    from parazoo.arch.pararnn import ParaGRUCell, ParaLSTMCell, ParallelRNN

    torch.manual_seed(0)
    cell = (ParaGRUCell if kind == "gru" else ParaLSTMCell)(H, H, recurrent_bound=1.0)
    rnn = ParallelRNN(cell, backend=backend, chunk_size=chunk_size)
    x = torch.randn(B, T, H, requires_grad=True)
    row = {"cell": kind, "B": B, "H": H, "T": T}
    for mode in ("parallel", "sequential"):
        def fwd():
            with torch.no_grad():
                rnn(x, mode=mode)

        def fwd_bwd():
            h = rnn(x, mode=mode)
            h.sum().backward()

        reps = 1 if (mode == "sequential" and B * H * T > 2_000_000) else repeats
        row[f"{mode}_fwd_ms"] = 1e3 * _time(fwd, reps)
        row[f"{mode}_fwd_bwd_ms"] = 1e3 * _time(fwd_bwd, reps)
        if mode == "parallel":
            row["newton_iters"] = rnn.last_info.max_iterations
            row["fell_back"] = rnn.last_info.fell_back
    row["speedup_fwd"] = row["sequential_fwd_ms"] / row["parallel_fwd_ms"]
    row["speedup_fwd_bwd"] = row["sequential_fwd_bwd_ms"] / row["parallel_fwd_bwd_ms"]
    return row


def table(rows: list[dict]) -> str:
    head = ("| cell | B x H | T | Newton iters | parallel fwd ms | seq fwd ms | fwd speed-up | "
            "parallel fwd+bwd ms | seq fwd+bwd ms | fwd+bwd speed-up |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['B']}x{r['H']} | {r['T']} | {r['newton_iters']} | {r['parallel_fwd_ms']:.1f} | "
                     f"{r['sequential_fwd_ms']:.1f} | {r['speedup_fwd']:.1f}x | {r['parallel_fwd_bwd_ms']:.1f} | "
                     f"{r['sequential_fwd_bwd_ms']:.1f} | {r['speedup_fwd_bwd']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="parazoo bench pararnn", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small subset: 1x64, T in {512, 2048}")
    p.add_argument("--cells", default="gru,lstm", help="comma list of gru,lstm")
    p.add_argument("--lengths", default=None, help="comma list of T (default 512,2048,8192)")
    p.add_argument("--sizes", default=None, help="comma list of BxH (default 1x64,8x256)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--chunk-size", type=int, default=None, help="Newton chunk length (default: whole sequence)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help="scan backend for the Newton steps")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")] if a.sizes else SIZES
    lengths = [int(t) for t in a.lengths.split(",")] if a.lengths else LENGTHS
    if a.quick:
        sizes, lengths = sizes[:1], [t for t in lengths if t <= 2048]
    torch.set_default_device(a.device)
    rows = []
    for kind in a.cells.split(","):
        for B, H in sizes:
            for T in lengths:
                r = run_case(kind, B, H, T, a.repeats, a.backend, a.chunk_size)
                rows.append(r)
                print(f"{kind} {B}x{H} T={T}: parallel {r['parallel_fwd_bwd_ms']:.1f} ms, sequential "
                      f"{r['sequential_fwd_bwd_ms']:.1f} ms (fwd+bwd), {r['speedup_fwd_bwd']:.1f}x, "
                      f"{r['newton_iters']} Newton iterations", flush=True)
                if a.out:  # after every row, so a long run that is stopped keeps what it measured
                    _write(a.out, rows, a.device)
    print()
    print(table(rows))
    if a.out:
        print(f"\nwrote {a.out}")
    return 0


def _write(path: str, rows: list[dict], device: str) -> None:
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor(), "device": device}
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
