"""Run the grid of a comparison recipe, one Lightning training run per cell, resumably.

Every run goes through parazoo's training path (LMModule + the task's data module + Lightning
Trainer + parazoo's loggers and callbacks); results land in ``<out>/runs/<run id>.json`` and a
finished run is skipped on restart (same recipe hash).
"""
from __future__ import annotations

import json
import math
import os
import time
import traceback
from pathlib import Path

import lightning as L
import torch

from .recipe import TASK_KINDS, Recipe, Run, Task

__all__ = ["run_grid", "run_one", "state_bytes", "measure_throughput", "metric_of"]


def metric_of(task: Task) -> tuple[str, bool]:
    """(metric key, higher is better) of a task: accuracy for synthetic tasks, loss for text."""
    return ("val/loss", False) if task.kind == "text" else ("val/acc", True)


def build_datamodule(task: Task, seed: int, data_path: str | None):
    import parazoo.training as T

    kw = dict(task.data)
    kw["batch_size"] = task.batch_size
    kw["seed"] = seed
    if task.kind == "text" and data_path:
        kw["paths"] = [data_path]
    return getattr(T, TASK_KINDS[task.kind])(**kw)


def model_config(recipe: Recipe, task: Task, run: Run, dm):
    from parazoo.arch import ModelConfig

    vocab = 8 * math.ceil(dm.vocab_size / 8)
    extra = dict(recipe.model)
    return ModelConfig(name=f"{recipe.name}-{run.id}", vocab_size=vocab, d_model=run.width,
                       n_layers=task.n_layers or recipe.n_layers, mixer=run.mixer,
                       mixer_kwargs=dict(recipe.mixer_kwargs.get(run.mixer, {})),
                       max_seq_len=max(int(dm.max_seq_len), 64), **extra)


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


@torch.no_grad()
def state_bytes(model, seq_len: int) -> int:
    """Recurrent state of one sequence after ``seq_len`` tokens, in bytes (attention: its KV cache)."""
    was = model.training
    model.eval()
    _, st = model(torch.zeros(1, seq_len, dtype=torch.long, device=next(model.parameters()).device))
    model.train(was)
    return sum(t.numel() * t.element_size() for t in _tensors(st.layers))


class Curve(L.Callback):
    """Records (step, tokens, seconds, val metrics) at each validation and the solver statistics
    (ParaRNN Newton iterations) at each logged training step."""

    def __init__(self, solver):
        self.points, self.solver_points, self.t0, self.solver = [], [], None, solver

    def on_train_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if self.t0 is None or trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.points.append({"step": trainer.global_step, "tokens": int(pl_module.tokens_seen),
                            "seconds": time.perf_counter() - self.t0, **m})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.solver.last and (not self.solver_points or self.solver_points[-1]["step"] != trainer.global_step):
            self.solver_points.append({"step": trainer.global_step, **self.solver.last})


def run_one(recipe: Recipe, task: Task, run: Run, out_dir: Path, data_path: str | None, group: str,
            progress: bool = True) -> dict:
    from parazoo.training import LMModule, SolverStats, Throughput, build_loggers, check_data_fits_model

    L.seed_everything(run.seed, verbose=False)
    dm = build_datamodule(task, run.seed, data_path)
    cfg = model_config(recipe, task, run, dm)
    check_data_fits_model(cfg, dm)
    horizon = task.decay_steps or task.steps  # warmup: the first tenth of the schedule's horizon
    module = LMModule(cfg, lr=run.lr, warmup_steps=max(1, horizon // 10), decay_steps=horizon)
    thr, solver = Throughput(), SolverStats()
    curve = Curve(solver)
    val_every = task.val_every or max(1, task.steps // 4)
    kw = {}
    if recipe.budget == "seconds":
        kw["max_time"] = {"seconds": float(recipe.seconds)}
    trainer = L.Trainer(max_steps=task.steps, accelerator="auto", devices=1, gradient_clip_val=1.0,
                        val_check_interval=val_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        log_every_n_steps=max(1, min(10, task.steps // 20)), enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=progress,
                        logger=build_loggers(str(out_dir / "logs"), group, version=run.id,
                                             config={"recipe": recipe.name, "run": run.id, "model": cfg.to_dict(),
                                                     "task": task.name, "lr": run.lr, "seed": run.seed}),
                        callbacks=[thr, solver, curve], default_root_dir=str(out_dir))
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    train_seconds = time.perf_counter() - t0
    if not curve.points or curve.points[-1]["step"] != trainer.global_step:
        trainer.validate(module, dm, verbose=False)
    final = dict(curve.points[-1]) if curve.points else {}
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.finish()
    model = module.model
    return {
        "run": run.__dict__, "id": run.id, "task": task.name, "kind": task.kind,
        "params": model.num_parameters(), "params_non_embedding": model.num_parameters(exclude_embeddings=True),
        "state_bytes": state_bytes(model, int(dm.max_seq_len)), "seq_len": int(dm.max_seq_len),
        "steps": trainer.global_step, "tokens": int(module.tokens_seen), "train_seconds": train_seconds,
        "final": final, "curve": curve.points, "solver": curve.solver_points, "throughput": thr.summary(),
    }


def metric_of_run(r: dict) -> str:
    """The final validation metric of a finished run, for progress lines."""
    key = "val/loss" if r.get("kind") == "text" else "val/acc"
    v = r.get("final", {}).get(key)
    return f"{key.split('/')[-1]} {v:.4g}" if isinstance(v, (int, float)) else f"{key.split('/')[-1]} -"


def _run_saved(recipe: Recipe, run: Run, path: Path, out_dir: Path, data_path: str | None, group: str,
               progress: bool, rhash: str, threads: int | None = None) -> dict:
    """One run (its failure becomes a result with the error), written atomically to ``path``."""
    if threads:
        torch.set_num_threads(threads)
    task = next(t for t in recipe.tasks if t.name == run.task)
    try:
        r = run_one(recipe, task, run, out_dir, data_path, group, progress)
    except Exception as e:  # a failing mixer is a row with its error, not a crash of the grid
        r = {"run": run.__dict__, "id": run.id, "task": run.task, "kind": task.kind,
             "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    r["recipe_hash"], r["data_path"] = rhash, data_path
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(r, indent=1, default=float))
    os.replace(tmp, path)
    return r


def run_grid(recipe: Recipe, runs: list[Run], out_dir: Path, rhash: str, data_path: str | None = None,
             progress: bool = True, log=print, jobs: int | None = None) -> list[dict]:
    """Run every run not already finished; return all results (finished + new, in ``runs`` order),
    errors included. ``jobs`` (default ``recipe.jobs``) > 1 runs that many at once, each in its own
    process with cpu_count // jobs threads (small models use several cores poorly)."""
    res_dir = out_dir / "runs"
    res_dir.mkdir(parents=True, exist_ok=True)
    group = f"compare-{recipe.name}"
    jobs = max(1, int(jobs if jobs is not None else recipe.jobs))
    results: dict[int, dict] = {}
    todo = []
    for i, run in enumerate(runs):
        path = res_dir / f"{run.id}.json"
        if path.exists():
            prev = json.loads(path.read_text())
            if prev.get("recipe_hash") == rhash and prev.get("data_path") == data_path and "error" not in prev:
                log(f"[{i + 1}/{len(runs)}] {run.id}: done earlier, skipped")
                results[i] = prev
                continue
        todo.append((i, run, path))

    def report(i, run, r):
        if "error" in r:
            log(f"    FAILED [{i + 1}/{len(runs)}] {run.id}: {r['error']}")
        else:
            log(f"    [{i + 1}/{len(runs)}] {run.id}: {metric_of_run(r)} in {r['train_seconds']:.0f} s")

    if jobs == 1 or len(todo) <= 1:
        for i, run, path in todo:
            log(f"[{i + 1}/{len(runs)}] {run.id}")
            results[i] = _run_saved(recipe, run, path, out_dir, data_path, group, progress, rhash)
            report(i, run, results[i])
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // jobs)
        log(f"running {len(todo)} runs, {jobs} at a time, {threads} thread(s) each")
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_run_saved, recipe, run, path, out_dir, data_path, group, False, rhash, threads): (i, run)
                    for i, run, path in todo}
            for f in as_completed(futs):
                i, run = futs[f]
                results[i] = f.result()
                report(i, run, results[i])
    return [results[i] for i in sorted(results)]


def measure_throughput(recipe: Recipe, mixers: list[str], out_dir: Path, log=print) -> list[dict]:
    """Training tokens/s (forward + backward + AdamW step) vs sequence length, per mixer."""
    from parazoo.arch import LanguageModel, ModelConfig

    spec = recipe.throughput or {}
    path = out_dir / "throughput.json"
    done = json.loads(path.read_text()) if path.exists() else []
    have = {(r["mixer"], r["seq_len"]) for r in done}
    width, bs, steps = int(spec.get("width", 64)), int(spec.get("batch_size", 4)), int(spec.get("steps", 3))
    for m in mixers:
        for T in spec.get("seq_lens", []):
            if (m, T) in have:
                continue
            row = {"mixer": m, "seq_len": T, "width": width, "batch_size": bs}
            try:
                torch.manual_seed(0)
                cfg = ModelConfig(vocab_size=256, d_model=width, n_layers=recipe.n_layers, mixer=m,
                                  mixer_kwargs=dict(recipe.mixer_kwargs.get(m, {})), max_seq_len=max(T, 64),
                                  **recipe.model)
                model = LanguageModel(cfg)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                ids = torch.randint(0, 256, (bs, T))

                def step():
                    logits, _ = model(ids)
                    torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten()).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                step()
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                dt = (time.perf_counter() - t0) / steps
                row["tokens_per_s"] = bs * T / dt
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
            log(f"  throughput {m:<14} T={T:<5} " + (f"{row['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in row
                                                     else row["error"]))
            done.append(row)
            path.write_text(json.dumps(done, indent=1))
    return done
