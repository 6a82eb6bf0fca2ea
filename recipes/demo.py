"""``parazoo demo``: the README's quickstart. Trains a small byte-level language model on the
built-in default corpus (the Python standard library's sources, no download) for a couple of
minutes on CPU, with Lightning's progress bar, then prints the validation loss, bits per byte
and a generated sample. It uses the training path of ``parazoo train`` (LMModule + TextData +
Lightning Trainer + parazoo's callbacks and loggers), not a loop of its own.

    parazoo demo                       # attention, ~2 minutes
    parazoo demo --mixer mamba --minutes 5
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="parazoo demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mixer", default="attention", help="any registered mixer (parazoo.arch.MIXERS)")
    ap.add_argument("--minutes", type=float, default=2.0, help="wall-clock budget for training")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps (the cosine schedule's horizon)")
    ap.add_argument("--d_model", type=int, default=128)
    ap.add_argument("--n_layers", type=int, default=2)
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out_dir", default="runs")
    ap.add_argument("--wandb", action="store_true", help="also log to W&B (offline unless configured)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import lightning as L

    from parazoo.arch import MIXERS, ModelConfig
    from parazoo.training import LMModule, TextData, TextSamples, Throughput, build_loggers, check_data_fits_model

    if args.mixer not in MIXERS:
        print(f"parazoo demo: error: unknown mixer {args.mixer!r}; registered: {sorted(MIXERS)}", file=sys.stderr)
        return 2
    L.seed_everything(args.seed, verbose=False)
    mixer_kwargs = {"n_heads": 4} if args.mixer == "attention" else {}
    config = ModelConfig(name=f"demo-{args.mixer}", vocab_size=256, d_model=args.d_model, n_layers=args.n_layers,
                         mixer=args.mixer, mixer_kwargs=mixer_kwargs, max_seq_len=max(1024, args.seq_len))
    data = TextData(seq_len=args.seq_len, batch_size=args.batch_size, max_bytes=2 * 2**20, seed=args.seed)
    module = LMModule(config, lr=args.lr, warmup_steps=max(1, args.steps // 20), decay_steps=args.steps)
    check_data_fits_model(config, data)
    print(f"parazoo demo: {args.mixer} model, {module.model.num_parameters():,} parameters; byte-level text from the "
          f"Python standard library; up to {args.steps} steps or {args.minutes:g} minutes", flush=True)
    samples = TextSamples(max_new_tokens=120, prompt="def ", temperature=0.8, seed=args.seed)
    throughput = Throughput()
    trainer = L.Trainer(max_steps=args.steps, max_time={"seconds": int(args.minutes * 60)}, accelerator="auto", devices=1,
                        gradient_clip_val=1.0, val_check_interval=max(1, args.steps // 2), limit_val_batches=10,
                        check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=10,
                        logger=build_loggers(args.out_dir, config.name, config={"demo": vars(args), "model": config.to_dict()},
                                             wandb=args.wandb),
                        callbacks=[throughput, samples], enable_model_summary=False, default_root_dir=args.out_dir)
    trainer.fit(module, data)
    metrics = trainer.validate(module, data, verbose=False)[0]
    perf = throughput.summary()
    print(f"\nfinal validation ({trainer.global_step} steps): loss {metrics['val/loss']:.4f} nats/byte, "
          f"{metrics['val/bpb']:.4f} bits per byte, perplexity {metrics['val/ppl']:.2f}")
    if perf:
        print(f"throughput: {perf['tokens_per_s']:,.0f} tokens/s ({perf['step_time_s'] * 1000:.0f} ms per step)")
    text = samples.sample(module, data)
    print("sample (prompt 'def ', temperature 0.8):\n" + "-" * 60 + f"\n{text}\n" + "-" * 60)
    print(f"logs: {trainer.log_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
