"""``parazoo train`` end to end: the debug recipe, resume equality, export, and bad input."""
import pytest
import torch

from parazoo.arch import LanguageModel
from parazoo.training import LMModule

from .conftest import read_metrics, run_train

FAST = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_debug_recipe_end_to_end_and_export(tmp_path, debug_recipe, capsys):
    rc = run_train("--config", debug_recipe, "--out_dir", tmp_path, "--trainer.max_steps", 6,
                   "--trainer.val_check_interval", 6, *FAST)
    assert rc == 0
    out = capsys.readouterr().out
    assert "class_path: parazoo.training.MQAR" in out and "max_steps: 6" in out   # resolved config printed
    run = tmp_path / "debug" / "version_0"
    m = read_metrics(run)
    assert sorted(m["train/loss"]) == list(range(6))
    assert float(m["train/tokens"][5]) == 6 * 16 * 32
    for key in ("val/loss", "val/acc", "val/kv4_len32/acc", "val/kv8_len64/acc", "perf/tokens_per_s", "perf/peak_mem_mb"):
        assert key in m, key
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.ckpt").exists()

    # export -> save_pretrained folder; logits equal the checkpointed module's
    out_dir = tmp_path / "exported"
    assert run_train("export", "--ckpt", run / "checkpoints" / "last.ckpt", "--out", out_dir) == 0
    model = LanguageModel.from_pretrained(str(out_dir))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    module = LMModule(ckpt["hyper_parameters"]["config"])
    module.load_state_dict(ckpt["state_dict"])
    x = torch.randint(0, 64, (2, 20))
    assert torch.equal(model(x)[0], module.model(x)[0])
    assert run_train("export", "--ckpt", tmp_path / "nope.ckpt", "--out", out_dir) == 2


def test_resumed_run_continues_the_same_loss_curve(tmp_path, debug_recipe):
    """Kill after 3 of 6 steps (mid-epoch: 4 batches per epoch), resume from last.ckpt: every
    step's loss equals the uninterrupted run's, across the epoch boundary too (CPU, seeded,
    deterministic data order)."""
    common = ["--config", debug_recipe, "--out_dir", tmp_path, "--model.decay_steps", 6, "--model.warmup_steps", 2,
              "--data.init_args.num_train_examples", 64,
              "--trainer.limit_val_batches", 0, "--checkpoint_every_n_steps", 1, *FAST]
    assert run_train(*common, "--name", "full", "--trainer.max_steps", 6) == 0
    assert run_train(*common, "--name", "cut", "--trainer.max_steps", 3) == 0
    last = tmp_path / "cut" / "version_0" / "checkpoints" / "last.ckpt"
    assert run_train(*common, "--name", "resumed", "--trainer.max_steps", 6, "--ckpt_path", last) == 0
    full = read_metrics(tmp_path / "full" / "version_0")
    cut = read_metrics(tmp_path / "cut" / "version_0")
    resumed = read_metrics(tmp_path / "resumed" / "version_0")
    assert sorted(cut["train/loss"]) == [0, 1, 2] and sorted(resumed["train/loss"]) == [3, 4, 5]
    stitched = {**cut["train/loss"], **resumed["train/loss"]}
    assert stitched == full["train/loss"]                      # equal as written, step by step
    assert {**cut["train/lr"], **resumed["train/lr"]} == full["train/lr"]
    assert resumed["train/tokens"][5] == full["train/tokens"][5]
    # the losses change from step to step, so equality is not vacuous
    assert len(set(full["train/loss"].values())) == 6


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("extra, message", [
    (["--trainer.max_stepz", "3"], "max_stepz"),
    (["--model.lrr", "0.1"], "lrr"),
    (["--model.config.mixer", "nosuch"], "nosuch"),
    (["--model.config.max_seq_len", "32"], "sequences of 64 tokens but the model supports max_seq_len=32"),
    (["--data.init_args.train_configs", "[{seq_len: 32, num_kv_pair: 4}]"], "num_kv_pair"),
])
def test_bad_overrides_are_clear_errors_before_training(tmp_path, debug_recipe, capsys, extra, message):
    rc = run_train("--config", debug_recipe, "--out_dir", tmp_path, *extra)
    assert rc != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "debug").exists()  # nothing was trained or logged


def test_recipe_typo_is_an_error(tmp_path, debug_recipe, capsys):
    bad = _write(tmp_path, "bad.yaml", debug_recipe.read_text().replace("warmup_steps:", "warmup_stepz:"))
    assert run_train("--config", bad, "--out_dir", tmp_path) != 0
    assert "warmup_stepz" in capsys.readouterr().err


def test_missing_and_empty_text_files_are_errors(tmp_path, capsys):
    empty = _write(tmp_path, "empty.txt", "")
    for path, msg in [(tmp_path / "missing.txt", "does not exist"), (empty, "is empty")]:
        rc = run_train("--model.config", "attention-tiny", "--data", "parazoo.training.TextData",
                       "--data.paths", f"[{path}]", "--out_dir", tmp_path)
        assert rc == 2
        assert msg in capsys.readouterr().err
