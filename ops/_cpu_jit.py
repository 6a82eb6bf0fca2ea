"""Fused CPU loops: small C kernels compiled once with the system C compiler, called by ctypes.

Sequential recurrences (scans over time) are memory-bound loops that PyTorch cannot fuse; a few
lines of C per op, parallel over independent channels with OpenMP, run them at memory speed.
No torch headers are involved, so a kernel compiles in about a second on first use and is
cached under ``$PARAZOO_CACHE`` (default ``~/.cache/parazoo/cpu``), keyed by a hash of its
source, the compiler and the machine.

Nothing is compiled at install time. Where no C compiler is found (or ``PARAZOO_NO_CC=1``),
``load`` returns None and the op falls back to its pure-torch chunked path, with one warning.

Usage in an op::

    _LIB = CKernel("linear_scan", C_SOURCE, {"ls_fwd_f32": [PTR, PTR, PTR, I64, I64, I64]})
    lib = _LIB.load()          # None when unavailable
    lib.ls_fwd_f32(ptr(a), ptr(b), ptr(out), B, T, D)

Pointers come from ``ptr(tensor)`` on contiguous CPU tensors; the C code sees row-major arrays.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

import torch

__all__ = ["CKernel", "PTR", "I64", "F32", "F64", "ptr", "cc_available"]

PTR = ctypes.c_void_p
I64 = ctypes.c_int64
F32 = ctypes.c_float
F64 = ctypes.c_double

_WARNED = set()
_LOCK = threading.Lock()


def ptr(t: torch.Tensor | None, strided: bool = False, offset: int = 0) -> int | None:
    """Address of a contiguous CPU tensor's data (None passes NULL), ``offset`` elements in (e.g. a block's
    first chunk in a full tensor); ``strided``: any layout, for a kernel that is also given the tensor's strides."""
    if t is None:
        return None
    if t.is_cuda or not (strided or t.is_contiguous()):
        raise ValueError("internal: C kernels need contiguous CPU tensors")
    return t.data_ptr() + offset * t.element_size()


def _compiler() -> str | None:
    if os.environ.get("PARAZOO_NO_CC", "0") not in ("", "0"):
        return None
    for c in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def cc_available() -> bool:
    return _compiler() is not None


def _cache_dir() -> str:
    d = os.environ.get("PARAZOO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "parazoo", "cpu")
    os.makedirs(d, exist_ok=True)
    return d


class CKernel:
    """A C translation unit compiled on first use; ``load()`` returns the ctypes library or None."""

    HEADER = "#include <math.h>\n#include <stdint.h>\n#include <string.h>\n#include <stdlib.h>\n"

    def __init__(self, name: str, source: str, functions: dict[str, list]):
        self.name = name
        self.source = self.HEADER + source
        self.functions = functions
        self._lib = None
        self._tried = False

    def _flags(self, openmp: bool) -> list[str]:
        flags = ["-O3", "-shared", "-fPIC", "-std=c99", "-ffp-contract=fast"]
        if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
            flags.append("-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native")
        if openmp:
            flags.append("-fopenmp")
        return flags

    def _build(self, cc: str) -> str:
        key = hashlib.sha256((self.source + cc + platform.machine() + platform.node() + sys.version).encode()).hexdigest()[:16]
        path = os.path.join(_cache_dir(), f"{self.name}_{key}.so")
        if os.path.exists(path):
            return path
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, f"{self.name}.c")
            with open(src, "w") as f:
                f.write(self.source)
            out = os.path.join(tmp, "lib.so")
            err = ""
            for openmp in (True, False):  # retry without OpenMP where it is not installed
                r = subprocess.run([cc, *self._flags(openmp), src, "-o", out, "-lm"], capture_output=True, text=True)
                if r.returncode == 0:
                    break
                err = r.stderr
            else:
                raise RuntimeError(f"C compile of {self.name} failed:\n{err[-3000:]}")
            tmp_target = path + f".{os.getpid()}.tmp"
            shutil.copy(out, tmp_target)
            os.replace(tmp_target, path)  # atomic: concurrent builders never see a half file
        return path

    def load(self):
        """The compiled library, or None (warned once) when no compiler works here."""
        if self._tried:
            return self._lib
        with _LOCK:
            if self._tried:
                return self._lib
            cc = _compiler()
            try:
                if cc is None:
                    raise RuntimeError("no C compiler found (or PARAZOO_NO_CC=1)")
                lib = ctypes.CDLL(self._build(cc))
                for fname, argtypes in self.functions.items():
                    fn = getattr(lib, fname)
                    fn.argtypes = argtypes
                    fn.restype = None
                self._lib = lib
            except Exception as e:  # fall back to the pure-torch path
                if self.name not in _WARNED:
                    _WARNED.add(self.name)
                    warnings.warn(f"parazoo: fused CPU kernel {self.name!r} unavailable ({e}); using the pure-torch path",
                                  RuntimeWarning, stacklevel=3)
                self._lib = None
            self._tried = True
        return self._lib

    def load_for(self, *tensors, dtypes=(torch.float32, torch.float64)):
        """The library when every given tensor (None ones skipped) is a contiguous CPU tensor of one
        dtype among ``dtypes``; else None, and the caller runs its torch path."""
        ts = [t for t in tensors if t is not None]
        if not ts or ts[0].dtype not in dtypes:
            return None
        if any(t.device.type != "cpu" or t.dtype != ts[0].dtype or not t.is_contiguous() for t in ts):
            return None
        return self.load()
