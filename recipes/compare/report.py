"""Aggregate comparison results (best learning rate per cell, spread over seeds) and write the
table (Markdown, CSV, JSON), the PNG plots, and a W&B summary table."""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from .recipe import Recipe
from .runner import metric_of

__all__ = ["aggregate", "write_tables", "write_plots", "log_wandb_summary"]


def _mean_std(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(recipe: Recipe, results: list[dict]) -> list[dict]:
    """One row per (task, mixer, width): Zoology's rule — for each learning rate average the
    metric over seeds, keep the best learning rate; report its mean and std over seeds, and the
    size, state and speed of that run. A cell whose every run failed carries the error; learning
    rates whose metric is not finite (diverged) are never best, and a cell where all diverged
    says so in its error."""
    tasks = {t.name: t for t in recipe.tasks}
    cells = defaultdict(lambda: defaultdict(list))
    errors = defaultdict(list)
    for r in results:
        run = r["run"]
        key = (r["task"], run["mixer"], run["width"])
        if "error" in r:
            errors[key].append(r["error"])
            continue
        cells[key][run["lr"]].append(r)
    rows = []
    for key in sorted(set(cells) | set(errors)):
        task_name, mixer, width = key
        task = tasks[task_name]
        metric, higher = metric_of(task)
        row = {"task": task_name, "mixer": mixer, "width": width, "metric": metric.split("/")[-1]}
        by_lr = {lr: rs for lr, rs in cells.get(key, {}).items() if all(metric in x["final"] for x in rs)}
        if not by_lr:
            row["error"] = (errors.get(key) or ["no finished run reported the metric"])[0]
            rows.append(row)
            continue
        score = {lr: statistics.mean(x["final"][metric] for x in rs) for lr, rs in by_lr.items()}
        finite = {lr: v for lr, v in score.items() if math.isfinite(v)}
        if not finite:  # every learning rate diverged: say so in the row, do not leave a blank
            row["error"] = f"diverged: {metric} is {next(iter(score.values()))} at every learning rate tried {sorted(score)}"
            rows.append(row)
            continue
        best = (max if higher else min)(finite, key=finite.get)
        rs = by_lr[best]
        mean, std = _mean_std([x["final"][metric] for x in rs])
        row.update({"value": mean, "std": std, "best_lr": best, "seeds": len(rs), "lrs_tried": len(by_lr),
                    "params": rs[0]["params"], "params_non_embedding": rs[0]["params_non_embedding"],
                    "state_bytes": rs[0]["state_bytes"], "seq_len": rs[0]["seq_len"], "tokens": rs[0]["tokens"],
                    "train_seconds": statistics.mean(x["train_seconds"] for x in rs),
                    "tokens_per_s": statistics.mean(x["throughput"].get("tokens_per_s", float("nan")) for x in rs)})
        if task.kind != "text":  # per-slice accuracies (e.g. MQAR (kv, length)), seed-averaged
            for k in rs[0]["final"]:
                if k.startswith("val/") and k.endswith("/acc") and k.count("/") == 2:
                    row["acc " + k.split("/")[1]] = statistics.mean(x["final"][k] for x in rs)
        else:
            bpb = [x["final"].get("val/bpb") for x in rs if x["final"].get("val/bpb") is not None]
            if bpb:
                row["bpb"] = statistics.mean(bpb)
        rows.append(row)
    return rows


def _fmt(v):
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return "-" if v is None else str(v)


def write_tables(rows: list[dict], out: Path) -> dict:
    cols = ["task", "mixer", "width", "metric", "value", "std", "best_lr", "params", "params_non_embedding",
            "state_bytes", "tokens", "train_seconds", "tokens_per_s"]
    extra = sorted({k for r in rows for k in r if k not in cols and k != "error" and k not in ("seeds", "lrs_tried", "seq_len")})
    cols = cols + extra + ["error"]
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=float))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    shown = [c for c in cols if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) if c != "error" else (r.get("error", "") or "")[:80]
                                       for c in shown) + " |")
    md = "\n".join(lines)
    (out / "results.md").write_text(md + "\n")
    return {"markdown": md}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(recipe: Recipe, rows: list[dict], results: list[dict], throughput: list[dict], out: Path) -> list[str]:
    plt = _plt()
    made = []
    ok_rows = [r for r in rows if "error" not in r]
    # MQAR accuracy vs width and vs state size, one panel per (seq, kv) slice
    for task in [t for t in recipe.tasks if t.kind == "mqar"]:
        trs = [r for r in ok_rows if r["task"] == task.name]
        slices = sorted({k[4:] for r in trs for k in r if k.startswith("acc ")}) or [None]
        for xkey, fname in (("width", "acc_vs_width"), ("state_bytes", "acc_vs_state")):
            fig, axes = plt.subplots(1, len(slices), figsize=(4.5 * len(slices), 3.6), squeeze=False)
            for ax, sl in zip(axes[0], slices):
                ykey = f"acc {sl}" if sl else "value"
                for m in sorted({r["mixer"] for r in trs}):
                    pts = sorted((r[xkey], r.get(ykey)) for r in trs if r["mixer"] == m and r.get(ykey) is not None)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=m)
                ax.set_title(f"{task.name} {sl or ''}".strip(), fontsize=9)
                ax.set_xlabel("model width" if xkey == "width" else "recurrent state (bytes / sequence)")
                if xkey == "state_bytes":
                    ax.set_xscale("log")
                ax.set_ylabel("accuracy")
                ax.set_ylim(-0.02, 1.02)
            axes[0][-1].legend(fontsize=7)
            fig.tight_layout()
            p = out / f"{task.name}_{fname}.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            made.append(p.name)
    # validation loss vs tokens and vs seconds (text tasks; best-lr run, first seed, largest width)
    for task in [t for t in recipe.tasks if t.kind == "text"]:
        best = {(r["mixer"]): r for r in sorted((r for r in ok_rows if r["task"] == task.name), key=lambda r: r["width"])}
        for xkey in ("tokens", "seconds"):
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            for m, row in sorted(best.items()):
                run = next((x for x in results if "error" not in x and x["task"] == task.name and x["run"]["mixer"] == m
                            and x["run"]["width"] == row["width"] and x["run"]["lr"] == row["best_lr"]), None)
                if run and run["curve"]:
                    ax.plot([p[xkey] for p in run["curve"]], [p.get("val/loss") for p in run["curve"]], marker=".", label=m)
            ax.set_xlabel("training tokens" if xkey == "tokens" else "training seconds")
            ax.set_ylabel("validation loss (nats/token)")
            ax.set_title(task.name, fontsize=9)
            ax.legend(fontsize=7)
            fig.tight_layout()
            p = out / f"{task.name}_val_loss_vs_{xkey}.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            made.append(p.name)
    # training throughput vs sequence length
    good = [r for r in throughput if "tokens_per_s" in r]
    if good:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for m in sorted({r["mixer"] for r in good}):
            pts = sorted((r["seq_len"], r["tokens_per_s"]) for r in good if r["mixer"] == m)
            ax.plot(*zip(*pts), marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("training tokens / s")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_seq_len.png", dpi=110)
        plt.close(fig)
        made.append("throughput_vs_seq_len.png")
    # ParaRNN Newton iterations over training
    solver_runs = [r for r in results if "error" not in r and r.get("solver")]
    if solver_runs:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for r in solver_runs:
            key = next((k for k in r["solver"][0] if "iter" in k and k.endswith("_mean")), None)
            if key:
                ax.plot([p["step"] for p in r["solver"]], [p[key] for p in r["solver"]], label=r["id"][:40])
        ax.set_xlabel("training step")
        ax.set_ylabel("Newton iterations (mean over layers)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "newton_iterations.png", dpi=110)
        plt.close(fig)
        made.append("newton_iterations.png")
    return made


def log_wandb_summary(recipe: Recipe, rows: list[dict], out: Path, plots: list[str]) -> None:
    """One extra W&B run in the comparison's group carrying the results table and the plots."""
    from parazoo.training import wandb_mode

    mode = wandb_mode()
    if mode == "disabled":
        return
    import wandb

    run = wandb.init(project="parazoo", group=f"compare-{recipe.name}", name=f"compare-{recipe.name}-summary",
                     job_type="summary", dir=str(out), mode=mode, reinit="finish_previous")
    cols = sorted({k for r in rows for k in r})
    run.log({"results": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
    for p in plots:
        run.log({p[:-4]: wandb.Image(str(out / p))})
    run.finish()
