"""parazoo.recipes: YAML recipes (package data), the compare runner, benchmarks and the CLI."""
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


def recipe_path(name: str) -> Path:
    """Path of a packaged recipe: ``recipe_path("debug")`` -> .../recipes/debug.yaml."""
    p = RECIPES_DIR / (name if name.endswith(".yaml") else name + ".yaml")
    if not p.exists():
        avail = sorted(str(q.relative_to(RECIPES_DIR))[:-5] for q in RECIPES_DIR.rglob("*.yaml"))
        raise ValueError(f"recipe {name!r} not found; packaged recipes: {avail}")
    return p
