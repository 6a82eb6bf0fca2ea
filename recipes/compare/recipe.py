"""Comparison recipes: a validated description of the grid mixers x tasks x widths x learning
rates x seeds, and its expansion into runs.

YAML schema (unknown keys are errors, never ignored)::

    name: quick
    mixers: all                 # or a list of registered mixer names
    widths: [64]                # d_model values
    n_layers: 2
    lrs: [1.0e-3, 3.0e-3]       # Zoology's rule: report the best learning rate per cell
    seeds: [0]
    budget: tokens              # "tokens": every run of a task sees the same tokens (steps x batch x T);
    seconds: null               # "seconds": every run trains for `seconds` of wall-clock (steps = horizon)
    mixer_kwargs: {attention: {n_heads: 2}}     # per-mixer options (default: the mixer's own)
    model: {mlp: swiglu}        # extra ModelConfig fields for every run
    tasks:
      - name: mqar-64-4
        kind: mqar | text | selective_copying | induction_heads
        data: {...}             # arguments of the task's data module (parazoo.training)
        steps: 600
        batch_size: 64
        decay_steps: null       # cosine horizon (default: steps; warmup is its first tenth); longer
                                # keeps the learning rate high to the end of a short run
        widths / lrs / mixers / n_layers: optional per-task overrides
    throughput: {seq_lens: [128, 256, 512], width: 64, batch_size: 4, steps: 3}   # optional
    jobs: 1                     # runs at once, each its own process with cpu_count // jobs threads
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Recipe", "Task", "Run", "load_recipe", "expand"]

TASK_KINDS = {
    "mqar": "MQAR",
    "text": "TextData",
    "selective_copying": "SelectiveCopying",
    "induction_heads": "InductionHeads",
}


def _reject_unknown(where: str, given: dict, allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        hints = [f"{u!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, allowed, n=1)) else "")
                 for u in unknown]
        raise ValueError(f"{where}: unknown key(s) {', '.join(hints)}; allowed: {sorted(allowed)}")


@dataclasses.dataclass
class Task:
    name: str
    kind: str
    data: dict
    steps: int
    batch_size: int = 32
    widths: list | None = None
    lrs: list | None = None
    mixers: list | None = None
    n_layers: int | None = None
    val_every: int | None = None
    decay_steps: int | None = None

    @classmethod
    def from_dict(cls, d: dict, i: int) -> "Task":
        where = f"tasks[{i}]"
        if not isinstance(d, dict):
            raise ValueError(f"{where}: must be a mapping, got {d!r}")
        _reject_unknown(where, d, [f.name for f in dataclasses.fields(cls)])
        for k in ("name", "kind", "steps"):
            if k not in d:
                raise ValueError(f"{where}: missing key {k!r}")
        if d["kind"] not in TASK_KINDS:
            raise ValueError(f"{where}.kind must be one of {sorted(TASK_KINDS)}, got {d['kind']!r}")
        t = cls(**{**d, "data": dict(d.get("data") or {})})
        if not isinstance(t.steps, int) or t.steps < 1:
            raise ValueError(f"{where}.steps must be a positive int, got {t.steps!r}")
        if t.decay_steps is not None and (not isinstance(t.decay_steps, int) or t.decay_steps < t.steps):
            raise ValueError(f"{where}.decay_steps must be an int >= steps ({t.steps}), got {t.decay_steps!r}")
        if "batch_size" in t.data:
            raise ValueError(f"{where}.data: give batch_size at the task level, not in data")
        return t


@dataclasses.dataclass
class Recipe:
    name: str
    tasks: list
    mixers: Any = "all"
    widths: list = dataclasses.field(default_factory=lambda: [64])
    n_layers: int = 2
    lrs: list = dataclasses.field(default_factory=lambda: [1e-3])
    seeds: list = dataclasses.field(default_factory=lambda: [0])
    budget: str = "tokens"
    seconds: float | None = None
    mixer_kwargs: dict = dataclasses.field(default_factory=dict)
    model: dict = dataclasses.field(default_factory=dict)
    throughput: dict | None = None
    jobs: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if not isinstance(d, dict):
            raise ValueError(f"compare recipe must be a mapping, got {type(d).__name__}")
        _reject_unknown("compare recipe", d, [f.name for f in dataclasses.fields(cls)])
        if "name" not in d or "tasks" not in d:
            raise ValueError("compare recipe: 'name' and 'tasks' are required")
        tasks = [Task.from_dict(t, i) for i, t in enumerate(d["tasks"] or [])]
        if not tasks:
            raise ValueError("compare recipe: 'tasks' is empty")
        r = cls(**{**d, "tasks": tasks})
        if r.budget not in ("tokens", "seconds"):
            raise ValueError(f"compare recipe: budget must be 'tokens' or 'seconds', got {r.budget!r}")
        if r.budget == "seconds" and not (isinstance(r.seconds, (int, float)) and r.seconds > 0):
            raise ValueError("compare recipe: budget 'seconds' needs a positive 'seconds' per run")
        if not isinstance(r.jobs, int) or isinstance(r.jobs, bool) or r.jobs < 1:
            raise ValueError(f"compare recipe: jobs must be a positive int, got {r.jobs!r}")
        for k in ("widths", "lrs", "seeds"):
            v = getattr(r, k)
            if not isinstance(v, list) or not v:
                raise ValueError(f"compare recipe: {k!r} must be a non-empty list, got {v!r}")
        if r.throughput is not None:
            _reject_unknown("compare recipe: throughput", r.throughput, ["seq_lens", "width", "batch_size", "steps"])
        from parazoo.arch import MIXERS

        for m in r.mixer_names(None):
            if m not in MIXERS:
                raise ValueError(f"compare recipe: unknown mixer {m!r}; registered: {sorted(MIXERS)}")
        _reject_unknown("compare recipe: mixer_kwargs", r.mixer_kwargs, list(MIXERS))
        return r

    def mixer_names(self, task: Task | None) -> list[str]:
        from parazoo.arch import MIXERS

        sel = (task.mixers if task is not None and task.mixers is not None else self.mixers)
        if sel == "all":
            return sorted(MIXERS)
        if not isinstance(sel, list) or not sel:
            raise ValueError(f"compare recipe: mixers must be 'all' or a non-empty list, got {sel!r}")
        return list(sel)


@dataclasses.dataclass(frozen=True)
class Run:
    task: str
    mixer: str
    width: int
    lr: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.task}__{self.mixer}__d{self.width}__lr{self.lr:g}__s{self.seed}"

    def key(self, recipe_hash: str) -> str:
        return hashlib.sha1(f"{recipe_hash}:{self.id}".encode()).hexdigest()[:10]


def load_recipe(name_or_path: str) -> tuple[Recipe, dict]:
    """A packaged recipe name (``quick``) or a YAML path. Returns the Recipe and its raw dict."""
    p = Path(name_or_path)
    if not p.exists():
        here = Path(__file__).resolve().parent
        cand = here / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
        if not cand.exists():
            avail = sorted(q.stem for q in here.glob("*.yaml"))
            raise ValueError(f"compare recipe {name_or_path!r} is neither a file nor a packaged recipe {avail}")
        p = cand
    raw = yaml.safe_load(p.read_text())
    return Recipe.from_dict(raw), raw


def expand(recipe: Recipe, only_mixers: list[str] | None = None) -> list[Run]:
    runs = []
    for t in recipe.tasks:
        for m in recipe.mixer_names(t):
            if only_mixers and m not in only_mixers:
                continue
            for w in (t.widths or recipe.widths):
                for lr in (t.lrs or recipe.lrs):
                    for s in recipe.seeds:
                        runs.append(Run(t.name, m, int(w), float(lr), int(s)))
    return runs


def recipe_hash(raw: dict) -> str:
    return hashlib.sha1(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:8]
