"""DDP over 2 CPU processes (gloo): ``parazoo train`` with ``--trainer.devices 2`` trains the same
model as one process with twice the batch (same samples per global batch, gradients averaged)."""
import os
import subprocess
import sys

import pytest
import torch

from parazoo.training import checkpoint_to_model
from parazoo.ops.testing import assert_close

from .conftest import REPO


def _train(tmp_path, name, devices, batch_size):
    cmd = [sys.executable, "-m", "parazoo.recipes.cli", "train", "--config", str(REPO / "recipes" / "debug.yaml"),
           "--out_dir", str(tmp_path), "--name", name, "--trainer.max_steps", "3", "--trainer.accelerator", "cpu",
           "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
           "--data.init_args.batch_size", str(batch_size), "--trainer.limit_val_batches", "2",
           "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return checkpoint_to_model(str(tmp_path / name / "version_0" / "checkpoints" / "last.ckpt"))


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process_with_double_batch(tmp_path):
    ddp = _train(tmp_path, "ddp", devices=2, batch_size=8)
    single = _train(tmp_path, "single", devices=1, batch_size=16)
    for (name, a), (_, b) in zip(ddp.state_dict().items(), single.state_dict().items()):
        assert_close(a, b, name=name)
    # and training moved the weights away from the seeded init (the comparison is not vacuous)
    torch.manual_seed(0)
    init = type(single)(single.config).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in single.state_dict().items())
