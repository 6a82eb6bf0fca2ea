"""Helpers for training tests: run ``parazoo train`` in-process and read its CSV metrics."""
import csv
from pathlib import Path

import pytest

from parazoo.recipes import recipe_path

REPO = Path(__file__).resolve().parents[2]


def run_train(*argv) -> int:
    from parazoo.training.cli import main

    return main([str(a) for a in argv])


def read_metrics(run_dir: Path) -> dict[str, dict[int, str]]:
    """metric -> {step: value as written} from a CSVLogger run folder."""
    out: dict[str, dict[int, str]] = {}
    for row in csv.DictReader(open(run_dir / "metrics.csv")):
        for k, v in row.items():
            if v != "" and k not in ("step", "epoch"):
                out.setdefault(k, {})[int(row["step"])] = v
    return out


@pytest.fixture
def debug_recipe() -> Path:
    return recipe_path("debug")
