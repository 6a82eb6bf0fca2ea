"""``parazoo bench training``: Lightning's overhead. Tokens/s of the ``parazoo train`` path
(TrainCLI -> LMModule + data module + Trainer with parazoo's callbacks, CSV logger, progress
bar) against a bare PyTorch loop on the same model, data, optimiser (AdamW with the same decay
groups), schedule and gradient clipping.

Both are timed the same way: wall-clock time between the ends of consecutive optimizer steps
(data loading included), after ``--warmup`` steps; runs alternate (bare, lightning, bare, ...)
``--repeats`` times so that machine load drifts hit both. Reported: tokens/s from the median
step time (robust to load spikes on a shared machine) of the best run of each, and the mean.
Validation and checkpoint writes are switched off for both (they are not per-step costs).

    parazoo bench training [--config recipes/debug.yaml] [--steps 40] [-- --model.lr 1e-3 ...]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from functools import partial

import torch

from parazoo.recipes import recipe_path

from ._measure import markdown_table

__all__ = ["bare_loop", "lightning_run", "main"]


def _cli(config: str, steps: int, out_dir: str, overrides: list[str]):
    from parazoo.training.cli import TrainCLI, preflight

    with contextlib.redirect_stdout(io.StringIO()):  # the resolved config print
        cli = TrainCLI(["--config", config, "--out_dir", out_dir, "--wandb", "false", "--trainer.max_steps", str(steps),
                        "--trainer.limit_val_batches", "0", "--checkpoint_every_n_steps", str(10 * steps + 1),
                        "--trainer.enable_model_summary", "false", *overrides])
    preflight(cli.model, cli.datamodule)
    return cli


def lightning_run(config: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    from parazoo.training import Throughput

    with tempfile.TemporaryDirectory() as d:
        cli = _cli(config, steps, d, overrides)
        thr = next(cb for cb in cli.trainer.callbacks if isinstance(cb, Throughput))
        thr.skip_steps = warmup
        cli.trainer.fit(cli.model, cli.datamodule)
        return thr.summary()


def bare_loop(config: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    """The same training written as a plain PyTorch loop."""
    from parazoo.training.callbacks.throughput import summarise_steps
    from parazoo.training.metrics import lm_loss
    from parazoo.training.optim import build_adamw, warmup_cosine

    with tempfile.TemporaryDirectory() as d:
        cli = _cli(config, steps, d, overrides)
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    model, h = module.model, module.hparams
    device = trainer.strategy.root_device
    model.to(device).train()
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=dm.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(dm.seed))
    opt = build_adamw(model, h.lr, h.weight_decay, h.betas, h.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_cosine, warmup_steps=h.warmup_steps,
                                                           decay_steps=h.decay_steps or steps, min_lr_ratio=h.min_lr_ratio))
    clip = trainer.gradient_clip_val
    params = [p for p in model.parameters() if p.requires_grad]
    times, tokens, step = [], [], 0
    last = time.perf_counter()
    while step < steps:
        for batch in loader:
            x, y = batch["input_ids"].to(device), batch["labels"].to(device)
            loss = lm_loss(model(x)[0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            loss.item()
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            step += 1
            if step > warmup:
                times.append(now - last)
                tokens.append(x.numel())
            last = now
            if step >= steps:
                break
    return summarise_steps(times, tokens, [dm.batch_size] * len(times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="parazoo bench training", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(recipe_path("debug")), help="training recipe (default: the debug recipe)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides after '--', e.g. -- --model.config.d_model 128")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {"bare PyTorch loop": [], "parazoo train (Lightning)": []}
    for _ in range(args.repeats):
        runs["bare PyTorch loop"].append(bare_loop(args.config, args.steps, args.warmup, args.overrides))
        runs["parazoo train (Lightning)"].append(lightning_run(args.config, args.steps, args.warmup, args.overrides))
    key = "median_tokens_per_s"
    best = {k: max(v, key=lambda r: r[key]) for k, v in runs.items()}
    rows = [{"mode": k, "tps": f"{r[key]:,.0f}", "ms": f"{1000 * r['median_step_time_s']:.1f}",
             "mean": f"{r['tokens_per_s']:,.0f}", "all": ", ".join(f"{x[key]:,.0f}" for x in runs[k])}
            for k, r in best.items()]
    print(f"config {args.config} {' '.join(args.overrides)}; {args.steps} steps, first {args.warmup} not timed; "
          f"{torch.get_num_threads()} threads")
    print(markdown_table(rows, [("mode", "mode"), ("tps", "tokens/s (median step, best run)"), ("ms", "median ms/step"),
                                ("mean", "tokens/s (mean, best run)"), ("all", "median tokens/s, each run")]))
    bare, light = best["bare PyTorch loop"][key], best["parazoo train (Lightning)"][key]
    print(f"Lightning overhead: {100 * (1 - light / bare):+.1f}% tokens/s (goal: within 5%)")
    fpt = best["parazoo train (Lightning)"].get("flops_per_token")
    if fpt:
        print(f"FLOPs per token (matmul-type, counted on the first step): {fpt:,.0f}; "
              f"achieved {fpt * light / 1e9:.2f} GFLOP/s at the Lightning run's median step")
    return 0
