"""Tokenizers for text data. The default is byte-level: token = one UTF-8 byte (vocab 256), no
download, any language, and bits per byte is simply loss / ln 2."""
from __future__ import annotations

import torch

__all__ = ["ByteTokenizer", "TOKENIZERS", "get_tokenizer"]


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255."""

    name = "byte"
    vocab_size = 256
    bytes_per_token = 1.0

    def encode_bytes(self, data: bytes) -> torch.Tensor:
        """bytes -> (N,) uint8 token ids."""
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)

    def encode(self, text: str) -> torch.Tensor:
        return self.encode_bytes(text.encode("utf-8"))

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


TOKENIZERS = {"byte": ByteTokenizer}


def get_tokenizer(name: str):
    if name not in TOKENIZERS:
        raise ValueError(f"argument 'tokenizer' must be one of {sorted(TOKENIZERS)}, got {name!r}")
    return TOKENIZERS[name]()
