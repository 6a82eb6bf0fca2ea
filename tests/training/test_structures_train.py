"""Every structure trains through the Lightning path: a few steps of `parazoo train` on the debug
recipe with the structure set by command-line overrides: finite losses, validation runs."""
import pytest

from .conftest import read_metrics, run_train


@pytest.mark.parametrize("overrides", [
    ["--model.config.structure", "ladder"],
    ["--model.config.structure", "kraken", "--model.config.kraken_splits", "2"],
    ["--model.config.parscale_n", "2", "--model.config.parscale_prefix", "4"],
    ["--model.config.structure", "ladder", "--model.config.parscale_n", "2"],
], ids=["ladder", "kraken", "parscale", "parscale+ladder"])
def test_structure_trains_with_the_recipe(tmp_path, debug_recipe, overrides):
    rc = run_train("--config", debug_recipe, "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
                   "--out_dir", tmp_path, "--name", "s", *overrides)
    assert rc == 0
    run_dir = next(p for p in (tmp_path / "s").iterdir() if p.is_dir())
    m = read_metrics(run_dir)
    losses = [float(v) for v in m["train/loss"].values()]
    assert losses and all(l == l and l < 1e4 for l in losses)
    assert "val/loss" in m
