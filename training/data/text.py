"""Text language modelling data: tokenise a corpus, split it, pack fixed-length sequences.

Sources (exactly one): local text files (``paths``), a Hugging Face ``datasets`` dataset
(``hf_dataset``: a hub name, or a folder written by ``Dataset.save_to_disk``; needs the optional
``datasets`` package), or, when neither is given, the built-in default corpus (the Python
standard library's sources, see ``corpus.py``).

The token stream x_0 .. x_{N-1} is split once: the last ``val_fraction`` of it is validation.
Each split is packed into non-overlapping windows of T + 1 tokens with stride T:

    input_ids = x[iT : iT + T],   labels = x[iT + 1 : iT + T + 1]        (B, T) each

so every token of the split is predicted exactly once (bits per byte = mean loss / ln 2 for the
byte tokenizer). Relative paths are read relative to the working directory.
"""
from __future__ import annotations

import math
import os

import torch
from torch.utils.data import Dataset

from .base import LMDataModule
from .corpus import default_corpus_bytes
from .tokenizers import get_tokenizer

__all__ = ["PackedSequences", "TextData"]


class PackedSequences(Dataset):
    """Windows of seq_len + 1 tokens at stride seq_len over a 1-D token tensor."""

    def __init__(self, tokens: torch.Tensor, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len

    def __len__(self) -> int:
        return max(0, (self.tokens.numel() - 1) // self.seq_len)

    def __getitem__(self, i):
        T = self.seq_len
        chunk = self.tokens[i * T: i * T + T + 1].long()
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}


class TextData(LMDataModule):
    """Byte-level (by default) language modelling on local files, a HF dataset, or the default corpus.

    Args:
        paths: text file(s); missing or empty files are errors.
        hf_dataset / hf_split / hf_text_field: a ``datasets`` dataset and its text column.
        tokenizer: "byte" (vocab 256).
        seq_len: tokens per training sequence T.
        val_fraction: share of the token stream held out for validation (the end of it).
        max_bytes: cap on the text read (None = no cap; the default corpus is capped at 4 MB).
    """

    task = "text"
    DEFAULT_CORPUS_BYTES = 4 * 2**20

    def __init__(self, paths: list[str] | str | None = None, hf_dataset: str | None = None,
                 hf_split: str = "train", hf_text_field: str = "text", tokenizer: str = "byte",
                 seq_len: int = 256, val_fraction: float = 0.05, max_bytes: int | None = None,
                 batch_size: int = 16, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if isinstance(paths, str):
            paths = [paths]
        if paths is not None and hf_dataset is not None:
            raise ValueError("TextData: give either 'paths' or 'hf_dataset', not both")
        if paths is not None:
            if not paths:
                raise ValueError("TextData: argument 'paths' is an empty list; give at least one text file")
            for p in paths:
                if not os.path.isfile(p):
                    raise ValueError(f"TextData: data file {p!r} does not exist (resolved to {os.path.abspath(p)!r})")
                if os.path.getsize(p) == 0:
                    raise ValueError(f"TextData: data file {p!r} is empty")
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"TextData: argument 'seq_len' must be a positive int, got {seq_len!r}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"TextData: argument 'val_fraction' must be in (0, 1), got {val_fraction!r}")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"TextData: argument 'max_bytes' must be a positive int or None, got {max_bytes!r}")
        self.paths, self.hf_dataset, self.hf_split, self.hf_text_field = paths, hf_dataset, hf_split, hf_text_field
        self.tokenizer = get_tokenizer(tokenizer)
        self.bytes_per_token = self.tokenizer.bytes_per_token
        self.seq_len, self.val_fraction, self.max_bytes = seq_len, float(val_fraction), max_bytes

    # -------------------------------------------------------------- metadata
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.seq_len

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def encode(self, text: str) -> torch.Tensor:
        return self.tokenizer.encode(text)

    # -------------------------------------------------------------- data
    def read_bytes(self) -> bytes:
        """The raw corpus, deterministic, capped at max_bytes."""
        cap = self.max_bytes
        if self.paths is not None:
            data = b"\n".join(open(p, "rb").read() for p in self.paths)
        elif self.hf_dataset is not None:
            data = self._read_hf()
        else:
            data = default_corpus_bytes(cap or self.DEFAULT_CORPUS_BYTES)
        data = data if cap is None else data[:cap]
        if not data.strip():
            raise ValueError(f"TextData: the corpus is empty ({self._source()})")
        return data

    def _read_hf(self) -> bytes:
        try:
            import datasets
        except ImportError as e:
            raise ValueError("TextData: argument 'hf_dataset' needs the optional 'datasets' package "
                             "(pip install datasets)") from e
        if os.path.isdir(self.hf_dataset):
            ds = datasets.load_from_disk(self.hf_dataset)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[self.hf_split]
        else:
            ds = datasets.load_dataset(self.hf_dataset, split=self.hf_split)
        if self.hf_text_field not in ds.column_names:
            raise ValueError(f"TextData: dataset {self.hf_dataset!r} has no column {self.hf_text_field!r}; "
                             f"columns: {ds.column_names}")
        out, size = [], 0
        for text in ds[self.hf_text_field]:
            b = text.encode("utf-8") + b"\n"
            out.append(b)
            size += len(b)
            if self.max_bytes is not None and size >= self.max_bytes:
                break
        return b"".join(out)

    def _source(self) -> str:
        return f"files {self.paths}" if self.paths else (f"dataset {self.hf_dataset!r}" if self.hf_dataset else "default corpus")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        tokens = self.tokenizer.encode_bytes(self.read_bytes())
        n = tokens.numel()
        n_val = max(self.seq_len + 1, math.ceil(n * self.val_fraction))
        if n - n_val < self.seq_len + 1:
            raise ValueError(f"TextData: the corpus ({self._source()}) has {n} tokens, too few for a training and a "
                             f"validation sequence of seq_len {self.seq_len} (+1) each")
        self.train_set = PackedSequences(tokens[: n - n_val], self.seq_len)
        self.val_sets = {"text": PackedSequences(tokens[n - n_val:], self.seq_len)}
