"""What every parazoo data module shares: the batch format, the metadata the LM module reads, and
a resumable, seeded, rank-aware training loader.

Batch format (every data module): a dict of
    input_ids (B, T) int64   tokens fed to the model
    labels    (B, T) int64   labels[b, t] = the token to predict after reading input_ids[b, :t+1];
                             IGNORE_INDEX (-100) where the position is not scored.

Resume: ``ResumableLoader`` (a DataLoader) exposes ``state_dict()/load_state_dict()``, which
Lightning's fit loop saves in the checkpoint and restores before iterating, so a run resumed
mid-epoch continues with exactly the batches it would have seen. Its sampler is a
``DistributedSampler`` subclass (Lightning leaves it alone under DDP): each epoch's order is a
permutation seeded by (seed, epoch), split across ranks.
"""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["IGNORE_INDEX", "LMDataModule", "ResumableLoader", "ShardSampler", "SkippingSampler", "TensorPairs"]

IGNORE_INDEX = -100


class TensorPairs(Dataset):
    """(input_ids, labels) rows of two (N, T) tensors as batch dicts."""

    def __init__(self, input_ids: torch.Tensor, labels: torch.Tensor):
        assert input_ids.shape == labels.shape, (input_ids.shape, labels.shape)
        self.input_ids, self.labels = input_ids, labels

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


class SkippingSampler(DistributedSampler):
    """DistributedSampler (seeded per-epoch permutation, split over ranks) that can start an epoch
    after ``skip`` samples of this rank's share (used once, when resuming mid-epoch). Its length
    stays the full epoch's, as Lightning counts the resumed epoch's batches from the checkpoint."""

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ShardSampler(DistributedSampler):
    """Evaluation sampler: rank r takes indices r, r + W, r + 2W, ... in order, without the padding
    DistributedSampler adds, so statistics summed over ranks count every example once."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self._indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self):
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)


class ResumableLoader(DataLoader):
    """A DataLoader whose position (epoch, batches consumed) is checkpointed by Lightning.

    Sized, so Lightning does not prefetch ahead: the count of batches handed out equals the count
    of batches trained on when a checkpoint is written at the end of a step. A loaded position
    applies when the loader is next iterated in that same epoch (Lightning sets the sampler's
    epoch after loading the state and before the first batch)."""

    def __init__(self, dataset, batch_size: int, sampler: SkippingSampler, num_workers: int = 0, **kwargs):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                         **kwargs)
        self._epoch_started = 0
        self._consumed = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self):
        # a generator: this body runs at the first next(), after Lightning's set_epoch
        epoch = self.sampler.epoch
        self._consumed = 0
        if self._resume is not None and self._resume[0] == epoch:
            self._consumed = self._resume[1]
            self.sampler.skip = self._consumed * self.batch_size
        self._resume = None
        self._epoch_started = epoch
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch_started, "batches_consumed": self._consumed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = (int(state["epoch"]), int(state["batches_consumed"]))


class LMDataModule(L.LightningDataModule):
    """Base of parazoo's data modules. Subclasses build ``self.train_set`` and ``self.val_sets``
    (name -> Dataset) in ``setup`` and set:

    task: "text" (metrics loss, perplexity, bits per byte) or "synthetic" (loss, accuracy)
    vocab_size: tokens the data uses (the model's vocab must be at least this)
    max_seq_len: the longest input sequence any split produces
    bytes_per_token: for text, UTF-8 bytes per token (1 for the byte tokenizer) -> bpb
    """

    task: str = "synthetic"
    bytes_per_token: float | None = None

    def __init__(self, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{type(self).__name__}: argument 'batch_size' must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"{type(self).__name__}: argument 'num_workers' must be an int >= 0, got {num_workers!r}")
        self.batch_size, self.seed, self.num_workers = batch_size, int(seed), num_workers
        self.train_set: Dataset | None = None
        self.val_sets: dict[str, Dataset] = {}

    # -------------------------------------------------------------- metadata
    @property
    def vocab_size(self) -> int:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def max_seq_len(self) -> int:  # pragma: no cover
        raise NotImplementedError

    @property
    def val_names(self) -> list[str]:
        return list(self.val_sets)

    # -------------------------------------------------------------- loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> ResumableLoader:
        rank, world = self._rank_world()
        if len(self.train_set) < self.batch_size * world:
            raise ValueError(f"{type(self).__name__}: the training split has {len(self.train_set)} sequences, fewer "
                             f"than one global batch (batch_size {self.batch_size} x {world} processes)")
        sampler = SkippingSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return ResumableLoader(self.train_set, self.batch_size, sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        # Every rank evaluates a disjoint share (no padding); the LM module sums over ranks.
        rank, world = self._rank_world()
        return [DataLoader(ds, batch_size=self.batch_size, sampler=ShardSampler(ds, world, rank),
                           num_workers=self.num_workers) for ds in self.val_sets.values()]
