"""``parazoo compare``: fair architecture comparisons — a grid of mixers x tasks x widths x
learning rates x seeds, each run through the same Lightning training path, reported with the best
learning rate per cell (Zoology's rule) and the spread over seeds, parameter counts and recurrent
state size, as a table (Markdown, CSV, JSON), PNG plots and W&B runs grouped by comparison.

    parazoo compare --recipe quick [--out compare_out/quick] [--data PATH] [--mixers a,b] [--jobs N] [--fresh]

Runs finished earlier in the same output folder (same recipe) are skipped: a killed comparison
resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .recipe import Recipe, Run, expand, load_recipe, recipe_hash
from .report import aggregate, log_wandb_summary, write_plots, write_tables
from .runner import measure_throughput, run_grid

__all__ = ["main", "Recipe", "Run", "expand", "load_recipe", "aggregate"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="parazoo compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="quick", help="packaged recipe name (quick, standard) or a YAML path")
    ap.add_argument("--out", default=None, help="output folder (default compare_out/<recipe name>)")
    ap.add_argument("--data", default=None, help="a text file for the text tasks instead of the built-in corpus")
    ap.add_argument("--mixers", default=None, help="comma-separated subset of the recipe's mixers")
    ap.add_argument("--fresh", action="store_true", help="ignore finished runs in the output folder")
    ap.add_argument("--jobs", type=int, default=None,
                    help="runs at once, one process each (default: the recipe's jobs)")
    ap.add_argument("--no-progress", action="store_true", help="hide Lightning's per-run progress bars")
    args = ap.parse_args(argv)
    try:
        recipe, raw = load_recipe(args.recipe)
        if args.data is not None and not Path(args.data).is_file():
            raise ValueError(f"--data {args.data!r} is not a file")
        only = args.mixers.split(",") if args.mixers else None
        if only:
            from parazoo.arch import MIXERS

            bad = [m for m in only if m not in MIXERS]
            if bad:
                raise ValueError(f"--mixers: unknown mixer(s) {bad}; registered: {sorted(MIXERS)}")
        runs = expand(recipe, only)
        if args.jobs is not None and args.jobs < 1:
            raise ValueError(f"--jobs must be a positive int, got {args.jobs}")
    except ValueError as e:
        print(f"parazoo compare: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or f"compare_out/{recipe.name}")
    out.mkdir(parents=True, exist_ok=True)
    rhash = recipe_hash(raw) + ("-fresh" + str(time.time()) if args.fresh else "")
    data_path = str(Path(args.data).resolve()) if args.data else None
    print(f"parazoo compare: recipe {recipe.name!r}, {len(runs)} runs -> {out}", flush=True)
    t0 = time.perf_counter()
    results = run_grid(recipe, runs, out, rhash, data_path, progress=not args.no_progress, jobs=args.jobs)
    mixers = sorted({r.mixer for r in runs})
    throughput = measure_throughput(recipe, mixers, out) if recipe.throughput else []
    rows = aggregate(recipe, results)
    tables = write_tables(rows, out)
    plots = write_plots(recipe, rows, results, throughput, out)
    log_wandb_summary(recipe, rows, out, plots)
    print("\n" + tables["markdown"])
    failed = [r for r in rows if "error" in r]
    print(f"\n{len(results)} runs, {len(failed)} failed cells, {time.perf_counter() - t0:.0f} s; "
          f"results in {out}/results.{{md,csv,json}}; plots: {', '.join(plots) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
