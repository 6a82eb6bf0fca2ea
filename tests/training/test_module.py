"""LMModule pieces: loss and metrics against a float64 reference, decay groups, schedule, checks."""
import math

import pytest
import torch

from parazoo.arch import LanguageModel, ModelConfig
from parazoo.ops.testing import assert_close
from parazoo.training import MQAR, LMModule, TextData, check_data_fits_model
from parazoo.training.metrics import lm_loss, lm_statistics, summarise
from parazoo.training.optim import param_groups, warmup_cosine

TINY = dict(vocab_size=32, d_model=16, n_layers=1, mixer="attention", mixer_kwargs={"n_heads": 2}, max_seq_len=64)


def _reference_nll(logits, labels):
    """-ln softmax(logits)[label] over labels != -100, float64, one position at a time."""
    total, n, correct = 0.0, 0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            y = int(labels[b, t])
            if y == -100:
                continue
            row = logits[b, t].double()
            total += float(torch.logsumexp(row, 0) - row[y])
            correct += int(row.argmax()) == y
            n += 1
    return total, n, correct


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_and_statistics_match_reference(dtype):
    logits = torch.randn(3, 7, 11, dtype=dtype) * 3
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :4] = -100
    labels[2, 6] = -100
    total, n, correct = _reference_nll(logits, labels)
    assert_close(lm_loss(logits, labels).double(), torch.tensor(total / n, dtype=torch.float64), dtype=torch.float32)
    st = lm_statistics(logits, labels)
    assert st[1] == n and st[2] == correct
    assert_close(st[0], torch.tensor(total, dtype=torch.float64), dtype=torch.float32)
    m = summarise(st, bytes_per_token=1.0, with_accuracy=True)
    assert m["bpb"] == pytest.approx(m["loss"] / math.log(2)) and m["ppl"] == pytest.approx(math.exp(m["loss"]))
    assert m["acc"] == pytest.approx(correct / n)
    assert "bpb" not in summarise(st, None, False) and "acc" not in summarise(st, None, False)
    assert summarise(torch.zeros(3, dtype=torch.float64), 1.0, True) == {}


def test_weight_decay_groups_honour_no_decay_marks():
    model = LanguageModel(ModelConfig(**TINY, tie_embeddings=False))
    marked = model.blocks[0].mixer
    extra = next(p for p in marked.parameters() if p.ndim >= 2)
    extra._no_weight_decay = True
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    for name, p in model.named_parameters():
        expect_no_decay = p.ndim < 2 or p is extra or name == "embed.weight"
        assert (id(p) in ids(no_decay)) == expect_no_decay, name
        assert (id(p) in ids(decay)) != expect_no_decay, name
    assert id(model.head.weight) in ids(decay)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_cosine_schedule():
    f = lambda s: warmup_cosine(s, warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_module_accepts_preset_dict_and_config_and_rejects_bad_args():
    assert LMModule("attention-tiny").config.name == "attention-tiny"
    m = LMModule(TINY)
    assert m.config == ModelConfig(**TINY) and m.hparams["config"] == ModelConfig(**TINY).to_dict()
    with pytest.raises(ValueError, match="unknown mixer 'nosuch'"):
        LMModule({**TINY, "mixer": "nosuch"})
    with pytest.raises(ValueError, match="'lr'"):
        LMModule(TINY, lr=0.0)
    with pytest.raises(ValueError, match="unknown preset"):
        LMModule("no-such-preset")


def test_data_must_fit_model():
    cfg = ModelConfig(**TINY)
    check_data_fits_model(cfg, MQAR(vocab_size=32, train_configs=[{"seq_len": 64, "num_kv_pairs": 4}]))
    with pytest.raises(ValueError, match="sequences of 65 tokens .* max_seq_len=64"):
        check_data_fits_model(cfg, MQAR(vocab_size=32, test_configs=[{"seq_len": 65, "num_kv_pairs": 4}]))
    with pytest.raises(ValueError, match="256 token ids .* vocab_size is 32"):
        check_data_fits_model(cfg, TextData(seq_len=16))


def test_validation_reports_every_slice_exactly(tmp_path):
    """val/<slice>/loss and acc equal a direct computation on each slice; val/loss pools tokens."""
    import lightning as L

    dm = MQAR(vocab_size=32, train_configs=[{"seq_len": 16, "num_kv_pairs": 2}],
              test_configs=[{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 5}, {"seq_len": 32, "num_kv_pairs": 4, "num_examples": 3}],
              batch_size=2, num_train_examples=8)
    module = LMModule(TINY)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, enable_model_summary=False)
    trainer.validate(module, datamodule=dm)
    got = trainer.callback_metrics
    pooled = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for name, ds in dm.val_sets.items():
            st = lm_statistics(module.model(ds.input_ids)[0], ds.labels)
            pooled += st
            ref = summarise(st, None, True)
            assert float(got[f"val/{name}/loss"]) == pytest.approx(ref["loss"], rel=1e-5)
            assert float(got[f"val/{name}/acc"]) == pytest.approx(ref["acc"])
    assert float(got["val/loss"]) == pytest.approx(pooled[0].item() / pooled[1].item(), rel=1e-5)
