"""Tensor parallelism over 2 gloo processes on CPU: logits and every gradient equal the
single-process model (float64, to 1e-5), for standard, ladder and kraken structures, with a
replicated non-attention mixer, biases (GPT-2 style) and ParScale streams."""
import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parazoo.arch import MIXERS, LanguageModel, ModelConfig, tensor_parallel

BASE = dict(vocab_size=48, d_model=32, n_layers=3, mixer="attention", mixer_kwargs={"n_heads": 4, "n_kv_heads": 2})
CASES = {
    "standard": {},
    "standard-gpt2": dict(mlp="gelu", mlp_bias=True, norm="layernorm", pos_emb="learned", max_seq_len=64,
                          mixer_kwargs={"n_heads": 4, "bias": True}),
    "ladder": dict(structure="ladder"),
    "ladder-partial": dict(structure="ladder", ladder_layers=1),
    "kraken": dict(structure="kraken", kraken_splits=4),
    "parscale-ladder": dict(structure="ladder", parscale_n=2, parscale_prefix=3),
    "hybrid-replicated": dict(layer_mixers=["attention", "retnet", "attention"]) if "retnet" in MIXERS else {},
}


def _check(name, tp, ref, rank, world):
    tp_params = dict(tp.named_parameters())
    ref_params = dict(ref.named_parameters())
    for n, p in tp_params.items():
        r = ref_params[n]
        g, rg = p.grad, r.grad
        assert g is not None, f"{name}: {n} got no gradient under TP"
        if p.shape != r.shape:
            dim = [i for i, (a, b) in enumerate(zip(p.shape, r.shape)) if a != b]
            assert len(dim) == 1, f"{name}: {n} sharded in more than one dim"
            d, size = dim[0], p.shape[dim[0]]
            rg = rg.narrow(d, rank * size, size)
            r = r.detach().narrow(d, rank * size, size)
        torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=0, msg=f"{name}: {n} weights differ")
        torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: grad of {n}: {m}")


def _worker(rank, world, init_file, names):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for name in names:
            cfg = ModelConfig(**{**BASE, **CASES[name]})
            torch.manual_seed(0)
            ref = LanguageModel(cfg).double()
            tp = tensor_parallel(copy.deepcopy(ref))
            ids = torch.randint(0, 48, (2, 11), generator=torch.Generator().manual_seed(1))
            tgt = torch.randint(0, 48, (2, 11), generator=torch.Generator().manual_seed(2))
            outs = []
            for m in (ref, tp):
                logits, _ = m(ids)
                torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten()).backward()
                outs.append(logits.detach())
            torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: logits {m}")
            _check(name, tp, ref, rank, world)
            # decoding under TP: prefill + steps equal the full forward
            with torch.no_grad():
                a, s = tp(ids[:, :6])
                b, s = tp(ids[:, 6:7], s)
                c, _ = tp(ids[:, 7:], s)
            torch.testing.assert_close(torch.cat([a, b, c], 1), outs[0], rtol=1e-5, atol=1e-5)
            assert tp.tp_comm.n_reduces > 0
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("names", [["standard", "standard-gpt2", "ladder", "ladder-partial"],
                                   ["kraken", "parscale-ladder", "hybrid-replicated"]])
def test_tensor_parallel_equals_single_process(names):
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(2, os.path.join(d, "init"), names), nprocs=2, join=True)


def test_tensor_parallel_needs_distributed():
    m = LanguageModel(ModelConfig(**BASE))
    with pytest.raises(RuntimeError, match="not initialised"):
        tensor_parallel(m)
