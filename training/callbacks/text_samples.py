"""Generated text samples during text runs.

After each validation (rank zero), the model continues a fixed prompt (the first
``prompt_tokens`` tokens of the first validation sequence, or ``prompt``) for ``max_new_tokens``
tokens with a seeded sampler, decodes it with the data module's tokenizer, prints nothing, and
records it: a W&B table ``samples`` (step, text) when a WandbLogger is attached, a
``samples.txt`` file in the run's log folder otherwise too. Skipped for data modules without
``decode`` (synthetic tasks).
"""
from __future__ import annotations

import os

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["TextSamples"]


class TextSamples(L.Callback):
    def __init__(self, max_new_tokens: int = 128, prompt: str | None = None, prompt_tokens: int = 32,
                 temperature: float = 0.8, top_k: int | None = None, seed: int = 0):
        self.max_new_tokens, self.prompt, self.prompt_tokens = max_new_tokens, prompt, prompt_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.samples: list[tuple[int, str]] = []

    def _prompt_ids(self, dm) -> torch.Tensor | None:
        if self.prompt is not None:
            return dm.encode(self.prompt).long()
        ds = next(iter(dm.val_sets.values()), None)
        return None if ds is None or len(ds) == 0 else ds[0]["input_ids"][: self.prompt_tokens]

    def sample(self, pl_module, dm) -> str | None:
        ids = self._prompt_ids(dm)
        if ids is None or ids.numel() == 0:
            return None
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        out = pl_module.model.generate(ids[None].to(pl_module.device), self.max_new_tokens,
                                       temperature=self.temperature, top_k=self.top_k, generator=g)
        return dm.decode(out[0].cpu())

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module):
        dm = trainer.datamodule
        if trainer.sanity_checking or dm is None or not hasattr(dm, "decode"):
            return
        text = self.sample(pl_module, dm)
        if text is None:
            return
        step = trainer.global_step
        self.samples.append((step, text))
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_text(key="samples", columns=["step", "text"], data=[[step, text] for step, text in self.samples])
        if trainer.log_dir:
            os.makedirs(trainer.log_dir, exist_ok=True)
            with open(os.path.join(trainer.log_dir, "samples.txt"), "a", encoding="utf-8") as f:
                f.write(f"===== step {step}\n{text}\n")
