"""The ``parazoo`` command: ``parazoo <subcommand> ...``.

Subcommands are looked up in ``COMMANDS`` (name -> "module:function"); each function takes the
remaining argv list and returns an exit code.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("parazoo.recipes.demo:main", "train a small model on built-in text and print progress"),
    "bench": ("parazoo.recipes.cli:bench", "run a benchmark: parazoo bench {ops,mixers,pararnn,structures,...}"),
    "train": ("parazoo.training.cli:main", "train with a YAML recipe: parazoo train --config recipes/<name>.yaml"),
    "compare": ("parazoo.recipes.compare:main", "run an architecture comparison recipe"),
}


def _load(target: str):
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def bench(argv: list[str]) -> int:
    import pkgutil

    import parazoo.recipes.bench as pkg

    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: parazoo bench {" + ",".join(names) + "} [options]")
        return 0 if argv else 2
    if argv[0] not in names:
        print(f"parazoo bench: unknown benchmark {argv[0]!r}; available: {names}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"parazoo.recipes.bench.{argv[0]}").main(argv[1:]) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: parazoo <command> [options]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<9} {help_}")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"parazoo: unknown command {cmd!r}; choose from {list(COMMANDS)}", file=sys.stderr)
        return 2
    return int(_load(COMMANDS[cmd][0])(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
