"""Every training recipe under recipes/ loads, validates and builds (model, data, trainer).

A training recipe is any ``*.yaml`` under ``recipes/`` outside ``recipes/bench/`` and
``recipes/compare/`` (which hold other tools' inputs). Unknown keys, unknown mixers, data the
model cannot take, missing data files: all fail here. Recipes for mixers added later are
picked up automatically. The debug recipe is also run end to end in test_cli.py.
"""
import os

import pytest

from parazoo.arch import MIXERS
from parazoo.recipes import RECIPES_DIR
from parazoo.training.cli import TrainCLI
from parazoo.training.module import check_data_fits_model

from .conftest import REPO

NOT_TRAIN = {"bench", "compare"}
RECIPES = sorted(p for p in RECIPES_DIR.rglob("*.yaml") if not set(p.relative_to(RECIPES_DIR).parts[:-1]) & NOT_TRAIN)


def test_there_are_recipes():
    names = {p.relative_to(RECIPES_DIR).as_posix() for p in RECIPES}
    assert {"debug.yaml", "mqar/attention.yaml", "shakespeare/attention.yaml"} <= names


@pytest.mark.parametrize("task", ["mqar", "shakespeare"])
def test_one_recipe_per_mixer_at_matched_parameters(task):
    """Every registered mixer has a recipe per task, within 1% of attention's non-embedding parameters."""
    import torch
    import yaml

    from parazoo.arch import LanguageModel, ModelConfig

    def non_embedding(path):
        with torch.device("meta"):
            m = LanguageModel(ModelConfig(**yaml.safe_load(path.read_text())["model"]["config"]))
        emb = m.embed.weight.numel() + (m.head.weight.numel() if m.head is not None else 0)
        return sum(p.numel() for p in m.parameters()) - emb

    folder = RECIPES_DIR / task
    assert {p.stem for p in folder.glob("*.yaml")} >= set(MIXERS), f"recipes/{task} lacks a recipe for some mixer"
    base = non_embedding(folder / "attention.yaml")
    for name in MIXERS:
        n = non_embedding(folder / f"{name}.yaml")
        assert abs(n - base) <= 0.01 * base, f"recipes/{task}/{name}.yaml: {n:,} non-embedding params vs {base:,}"


@pytest.mark.parametrize("path", RECIPES, ids=[p.relative_to(RECIPES_DIR).as_posix() for p in RECIPES])
def test_recipe_is_valid(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # recipes name data files relative to the repository root
    text = path.read_text()
    if "../shared/" in text and not (REPO.parent / "shared").is_dir():
        pytest.skip("the shared corpus folder ../shared is not present on this machine")
    try:
        cli = TrainCLI(["--config", str(path), "--out_dir", str(tmp_path), "--wandb", "false"])
    except SystemExit:
        pytest.fail(f"{path}: invalid recipe:\n{capsys.readouterr().err}")
    config = cli.model.config
    for name, _ in config.mixer_specs():
        assert name in MIXERS
    check_data_fits_model(config, cli.datamodule)
    assert cli.trainer.max_steps > 0
    for p in getattr(cli.datamodule, "paths", None) or []:
        assert os.path.isfile(p)
