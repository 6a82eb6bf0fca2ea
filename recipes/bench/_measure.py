"""Shared measurement helpers for the benchmark scripts: wall time (median of repeats after a
warm-up, synchronising CUDA) and peak extra memory (CUDA allocator peak, or on CPU the growth of
the process's peak RSS during the first call, measured in a fresh subprocess per case)."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

__all__ = ["time_rounds", "time_call", "time_pairs", "peak_extra_mb", "release_free_memory", "rss_bytes", "peak_rss_bytes", "run_isolated", "markdown_table"]


def _sync(device=None):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_rounds(*fns, repeats: int = 5, warmup: int = 1, budget_s: float = 30.0) -> list[list[float]]:
    """Seconds of each fn, called in turn for ``repeats`` rounds after ``warmup`` rounds (fewer
    rounds once ``budget_s`` is spent): one list of times per fn."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    _sync()
    times = [[] for _ in fns]
    start = time.perf_counter()
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            _sync()
            out.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return times


def time_call(fn, repeats: int = 5, warmup: int = 1, budget_s: float = 20.0) -> float:
    """Median seconds of fn() over up to ``repeats`` runs (fewer when one run is slow)."""
    return statistics.median(time_rounds(fn, repeats=repeats, warmup=warmup, budget_s=budget_s)[0])


def time_pairs(f, g, repeats: int = 5, warmup: int = 1, budget_s: float = 30.0) -> tuple[list[float], list[float]]:
    """Seconds of f() and g() called alternately, ``repeats`` pairs after ``warmup`` (fewer when slow)."""
    tf, tg = time_rounds(f, g, repeats=repeats, warmup=warmup, budget_s=budget_s)
    return tf, tg


def peak_extra_mb(fn, cuda: bool, before=None) -> float:
    """Peak extra memory of one call of fn (MB): the CUDA allocator's peak, or on CPU the growth of
    the peak RSS after ``before()`` (e.g. dropping the last call's gradients) and with the heap's free
    memory returned to the OS first, so reused memory counts too. Call fn once before (warm-up):
    imports and compiles of a first call are not the op's memory."""
    if before is not None:
        before()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        release_free_memory()
        base = rss_bytes()
    fn()
    return round(((torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()) - base) / 2**20, 1)


def release_free_memory() -> None:
    """Return the C heap's free memory to the OS (glibc ``malloc_trim``), so that the next call's
    allocations show up as RSS growth even when freed memory is otherwise kept."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def rss_bytes() -> int:
    """Current resident set size, after resetting the peak counter (Linux /proc; elsewhere the
    process's lifetime peak, so growth readings there include earlier peaks)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to the current RSS
            f.write("5")
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak RSS since the last ``rss_bytes()`` (VmHWM) on Linux, else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r * 1024 if sys.platform != "darwin" else r


def run_isolated(module: str, func: str, payload: dict, timeout: float = 3600, env: dict | None = None) -> dict:
    """Run ``module.func(payload) -> dict`` in a fresh interpreter (clean peak-RSS counter), with ``env``."""
    code = (f"import json, sys; from {module} import {func} as f; "
            f"print('@@RESULT@@' + json.dumps(f(json.loads(sys.stdin.read()))))")
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(payload), capture_output=True, text=True,
                       timeout=timeout, env=env)
    for line in r.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    return {"error": (r.stderr or r.stdout)[-2000:].strip() or f"exit code {r.returncode}"}


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """columns: (key, header). Missing values print as '-'."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join("-" if r.get(k) is None else str(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
