"""Ahead-of-time compilation of Triton kernels for NVIDIA targets, with no GPU present.

Every module under ``parazoo.ops`` that defines Triton kernels lists them in a module-level
``AOT_SPECS = [AotSpec(...), ...]`` with a representative signature. The shared test
``tests/test_triton_aot.py`` discovers all of them and compiles each for sm_80 and sm_90 with
``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", cap, 32))``,
so a kernel that only works in the interpreter is caught. ``parazoo bench ops`` uses the same
list to report registers per thread and spill stores from ptxas.

Compilation must see real ``JITFunction`` objects, so it runs in a subprocess with
``TRITON_INTERPRET`` unset (under the interpreter ``@triton.jit`` returns interpreter objects).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from typing import Any

__all__ = ["AotSpec", "collect_specs", "compile_specs"]


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One kernel instantiation to compile: ``module:name`` with a Triton signature.

    signature: argument name -> Triton type ("*fp32", "*bf16", "i32", "fp32", "constexpr", ...).
    constexprs: values of the constexpr arguments. label distinguishes several instantiations.
    caps: the compute capabilities (80, 90) that launch this instantiation, where the launcher picks
    tile sizes per target.
    """

    module: str
    name: str
    signature: dict
    constexprs: dict = dataclasses.field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    label: str = ""
    caps: tuple = (80, 90)

    @property
    def id(self) -> str:
        short = self.module.replace("parazoo.ops.", "")
        return f"{short}:{self.name}" + (f"[{self.label}]" if self.label else "")


def collect_specs(package: str = "parazoo.ops") -> list[AotSpec]:
    """Import every module under ``package`` and gather their ``AOT_SPECS`` lists."""
    pkg = importlib.import_module(package)
    specs: list[AotSpec] = []
    for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
        mod = importlib.import_module(info.name)
        specs.extend(getattr(mod, "AOT_SPECS", []) or [])
    seen = set()
    out = []
    for s in specs:
        if s.id not in seen:
            seen.add(s.id)
            out.append(s)
    return out


_WORKER = r"""
import importlib, json, os, re, subprocess, sys, tempfile
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
specs, caps = json.loads(sys.stdin.read())
_bin = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# the newest bundled ptxas first: the plain one can be older than the PTX version Triton emits
ptxas_all = [p for p in (os.path.join(_bin, "ptxas-blackwell"), os.path.join(_bin, "ptxas")) if os.path.exists(p)]
out = []
for s in specs:
    fn = getattr(importlib.import_module(s["module"]), s["name"])
    for cap in [c for c in caps if c in s["caps"]]:
        rec = {"id": s["id"], "cap": cap}
        try:
            src = ASTSource(fn, s["signature"], constexprs=s["constexprs"])
            k = triton.compile(src, target=GPUTarget("cuda", cap, 32),
                               options={"num_warps": s["num_warps"], "num_stages": s["num_stages"]})
            rec["ok"] = True
            rec["shared"] = k.metadata.shared
            if ptxas_all:
                with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                    f.write(k.asm["ptx"])
                for ptxas in ptxas_all:
                    r = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{cap}{'a' if cap == 90 else ''}", f.name, "-o", os.devnull],
                                       capture_output=True, text=True)
                    if r.returncode == 0:
                        break
                os.unlink(f.name)
                txt = r.stdout + r.stderr
                m = re.search(r"Used (\d+) registers", txt)
                rec["registers"] = int(m.group(1)) if m else None
                m = re.search(r"(\d+) bytes spill stores", txt)
                rec["spill_stores"] = int(m.group(1)) if m else None
                m = re.search(r"(\d+) bytes spill loads", txt)
                rec["spill_loads"] = int(m.group(1)) if m else None
        except Exception as e:
            rec["ok"] = False
            rec["error"] = f"{type(e).__name__}: {e}"[-4000:]
        out.append(rec)
print("@@AOT@@" + json.dumps(out))
"""


def compile_specs(specs: list[AotSpec], caps=(80, 90), timeout: float = 1800,
                  workers: int | None = None) -> list[dict[str, Any]]:
    """Compile ``specs`` for each compute capability in ``caps`` that the spec is for, in clean
    subprocesses (``workers`` of them in parallel, default one per CPU core, at most 4).

    Returns one record per (spec, cap): ok, error, registers, spill_stores, spill_loads, shared.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(specs)))
    groups = [specs[i::workers] for i in range(workers)]

    def run(group):
        payload = json.dumps([[dict(dataclasses.asdict(s), id=s.id) for s in group], list(caps)])
        r = subprocess.run([sys.executable, "-c", _WORKER], input=payload, capture_output=True, text=True,
                           env=env, timeout=timeout)
        m = re.search(r"@@AOT@@(.*)$", r.stdout, re.S)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"AOT compile worker failed (rc={r.returncode}):\n{r.stderr[-4000:]}")
        return json.loads(m.group(1))

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return [rec for recs in pool.map(run, groups) for rec in recs]
