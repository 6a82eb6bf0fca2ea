"""Data modules: synthetic tasks (MQAR, selective copying, induction heads) and text.

Every module yields batches ``{"input_ids": (B, T), "labels": (B, T)}`` with -100 at unscored
positions, is seeded and deterministic, and resumes mid-epoch from a checkpoint.
"""
from .base import IGNORE_INDEX, LMDataModule, ResumableLoader
from .induction_heads import InductionHeads
from .mqar import MQAR
from .selective_copying import SelectiveCopying
from .synthetic import SyntheticDataModule
from .text import PackedSequences, TextData
from .tokenizers import ByteTokenizer, get_tokenizer

__all__ = ["IGNORE_INDEX", "ByteTokenizer", "InductionHeads", "LMDataModule", "MQAR", "PackedSequences",
           "ResumableLoader", "SelectiveCopying", "SyntheticDataModule", "TextData", "get_tokenizer"]
