"""Callbacks (throughput, text samples, solver statistics) and logger set-up, on a real tiny run."""
import math

import lightning as L
import pytest
import torch

from parazoo.training import LMModule, SolverStats, TextData, TextSamples, Throughput, build_loggers, wandb_mode


class _SolverLayer(torch.nn.Module):
    """A layer following the solver_stats() protocol (as ParaRNN's layers will)."""

    def __init__(self, iters, residual):
        super().__init__()
        self.iters, self.residual = iters, residual

    def solver_stats(self):
        return {"newton_iters": self.iters, "residual": torch.tensor(self.residual)}


def test_text_run_logs_bpb_samples_throughput_and_solver_stats(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    dm = TextData(paths=[str(corpus)], seq_len=32, batch_size=4, val_fraction=0.2)
    module = LMModule("attention-tiny", warmup_steps=1)
    module.model.blocks[0].add_module("solver_a", _SolverLayer(3, 1e-6))
    module.model.blocks[1].add_module("solver_b", _SolverLayer(5, 1e-4))
    thr, samples, solver = Throughput(skip_steps=0), TextSamples(max_new_tokens=8, prompt="the "), SolverStats()
    trainer = L.Trainer(accelerator="cpu", max_steps=3, val_check_interval=3, limit_val_batches=2,
                        logger=build_loggers(str(tmp_path), "text", config={"a": 1}), callbacks=[thr, samples, solver],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(module, dm)
    m = trainer.callback_metrics
    assert float(m["val/bpb"]) == pytest.approx(float(m["val/loss"]) / math.log(2), rel=1e-6)  # logged as float32
    tr = module.last_train_metrics
    assert tr["train/bpb"] == pytest.approx(tr["train/loss"] / math.log(2)) and "train/acc" not in tr and "val/acc" not in m
    assert tr["train/tokens"] == 3 * 4 * 32
    assert solver.last["solver/newton_iters_max"] == 5 and solver.last["solver/newton_iters_mean"] == 4
    assert solver.last["solver/residual_max"] == pytest.approx(1e-4)
    s = thr.summary()  # the first step ran under the FLOP counter and is not timed
    assert s["steps"] == 2 and s["tokens_per_s"] > 0 and abs(s["tokens_per_s"] / s["samples_per_s"] - 32) < 1e-9
    # matmul FLOPs per token, by hand: 6 per weight of every Linear and of the tied head (forward 2,
    # backward 4), plus attention 4 T d per layer forward (Q K^T, P V) and twice that backward
    model, T = module.model, 32
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    weights += model.embed.weight.numel() if model.head is None else 0
    expected = 6 * weights + 12 * T * model.config.d_model * model.config.n_layers
    assert thr.flops_per_token == expected and s["flops_per_token"] == expected
    assert thr.last["perf/tflops"] == pytest.approx(expected * thr.last["perf/tokens_per_s"] / 1e12)
    assert thr.last["perf/peak_mem_mb"] > 10 and thr.last["perf/tokens_per_s"] > 0
    assert len(samples.samples) == 1 and samples.samples[0][1].startswith("the ")
    assert (tmp_path / "text" / "version_0" / "samples.txt").read_text().startswith("===== step 3")


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    assert [type(lg).__name__ for lg in build_loggers(str(tmp_path), "x")] == ["CSVLogger"]
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"


@pytest.mark.slow
def test_offline_wandb_run_carries_config_and_group(monkeypatch, tmp_path):
    """A real offline W&B run (no network): resolved config attached, grouped by recipe name."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    loggers = build_loggers(str(tmp_path), "debug", config={"model": {"lr": 0.003}, "name": "debug"})
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "WandbLogger"]
    run = loggers[1].experiment
    try:
        assert run.group == "debug" and run.config["model"] == {"lr": 0.003}
        loggers[1].log_metrics({"train/loss": 1.0, "train/tokens": 512.0}, step=0)
    finally:
        run.finish()
