"""The built-in default text corpus: the Python standard library's own ``.py`` source files.

They exist on every machine that runs parazoo, need no download, and are read deterministically:
files sorted by their path relative to the stdlib folder (test suites and site-packages
excluded), concatenated with a newline, capped at ``max_bytes``. The exact text depends on the
Python version (3.11 and 3.12 ship different sources), so compare numbers across runs on the same
Python only.
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

__all__ = ["default_corpus_bytes", "default_corpus_files"]

_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def default_corpus_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in _EXCLUDED_DIRS]  # prune: never walk site-packages
        files.extend(Path(d) / n for n in names if n.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def default_corpus_bytes(max_bytes: int) -> bytes:
    """Up to ``max_bytes`` bytes of standard-library source."""
    out, size = [], 0
    for p in default_corpus_files():
        try:
            b = p.read_bytes()
        except OSError:
            continue
        out.append(b + b"\n")
        size += len(b) + 1
        if size >= max_bytes:
            break
    data = b"".join(out)[:max_bytes]
    if not data:
        raise ValueError(f"default corpus: no Python source files found under {sysconfig.get_paths()['stdlib']}")
    return data
