"""Plain text for causal language modelling: files -> tokens -> packed blocks, a held-out split, calibration windows.

Why packed blocks: perplexity and fine-tuning on raw text need no padding when the corpus
is one token stream cut into blocks of ``max_length`` tokens (files joined by the
tokenizer's end-of-text token); the remainder shorter than a block is dropped.

Why this split: block ``i`` is held out when ``i % validation_every == validation_every - 1``.
The split is a pure function of the token stream, so it is the same on every rank and in
every run; the blocks are its units, so no block crosses it; and held-out text comes from
the whole corpus, not only its end (the Jargon File ends in appendices and a bibliography,
which are not like its entries).  The training blocks between two held-out ones form a
contiguous *span*; calibration windows (:func:`calibration_windows`) are drawn inside spans,
so calibration never reads held-out tokens.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dstrain.errors import ConfigError

__all__ = ["read_texts", "tokenize_texts", "PackedText", "BlockDataset", "calibration_windows"]

INSTALL_HINTS = {"/usr/share/doc/jargon-text/": "apt-get install jargon-text",
                 "/usr/share/common-licenses/": "Debian's base-files package installs these texts"}
"""Where well-known offline texts live -> how to get them."""


def read_texts(paths: Sequence[str], field: str = "task.data") -> List[str]:
    """The UTF-8 text of every file (``.gz`` or plain), in order; each problem is one ConfigError naming the file."""
    texts = []
    for i, path in enumerate(paths):
        where = f"{field}[{i}]"
        if not os.path.isfile(path):
            hint = next((h for prefix, h in INSTALL_HINTS.items() if path.startswith(prefix)), None)
            raise ConfigError(where, f"{path} does not exist",
                              hint or "pass plain-text files (.txt or .gz); nothing is downloaded at run time")
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rb") as f:
                    raw = f.read()
            else:
                with open(path, "rb") as f:
                    raw = f.read()
            text = raw.decode("utf-8")
        except (OSError, EOFError, zlib.error) as err:
            raise ConfigError(where, f"{path} cannot be read ({err})", "pass an intact text or gzip file") from None
        except UnicodeDecodeError as err:
            raise ConfigError(where, f"{path} is not UTF-8 text (byte {err.start})",
                              "convert it to UTF-8 (e.g. iconv -t utf-8)") from None
        if not text.strip():
            raise ConfigError(where, f"{path} holds no text", "remove it or pass a file with text")
        texts.append(text)
    return texts


def tokenize_texts(tokenizer: Any, texts: Sequence[str]) -> Tensor:
    """One int64 token stream: each text without special tokens, texts separated by the end-of-text token."""
    eos = getattr(tokenizer, "eos_token_id", None)
    pieces: List[int] = []
    for i, text in enumerate(texts):
        if i and eos is not None:
            pieces.append(int(eos))
        # verbose=False: a whole book is longer than the model's context, and that is the point
        pieces.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return torch.tensor(pieces, dtype=torch.long)


@dataclass
class PackedText:
    """A token stream cut into blocks of ``block`` tokens, with the held-out rule of the module docstring."""

    tokens: Tensor
    block: int
    validation_every: int
    eval_blocks: Optional[int] = None

    def __post_init__(self) -> None:
        n = self.tokens.numel() // self.block
        every = self.validation_every
        self.eval_index = [i for i in range(n) if i % every == every - 1]
        if self.eval_blocks is not None:
            self.eval_index = self.eval_index[: self.eval_blocks]
        held_out = {i for i in range(n) if i % every == every - 1}  # all of them, used or not: never trained on
        self.train_index = [i for i in range(n) if i not in held_out]
        if not self.train_index or not self.eval_index:
            raise ConfigError("task.max_length", f"{self.tokens.numel():,} tokens make {n} block(s) of {self.block}, "
                              f"too few for a training and a held-out block (every {every}th block is held out)",
                              "pass more text, or lower task.max_length or task.validation_every")

    def block_tokens(self, i: int) -> Tensor:
        return self.tokens[i * self.block:(i + 1) * self.block]

    def spans(self) -> List[Tensor]:
        """Contiguous runs of training tokens between held-out blocks (views of ``tokens``)."""
        out, start = [], None
        train = set(self.train_index)
        for i in range(self.tokens.numel() // self.block + 1):
            if i in train:
                start = i if start is None else start
            elif start is not None:
                out.append(self.tokens[start * self.block:i * self.block])
                start = None
        return out


class BlockDataset(Dataset):
    """Blocks of a :class:`PackedText` as ``{"input_ids": LongTensor[block]}`` (the default collate stacks them)."""

    def __init__(self, packed: PackedText, index: Sequence[int]) -> None:
        self.packed, self.index = packed, list(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        return {"input_ids": self.packed.block_tokens(self.index[i]).clone()}


def calibration_windows(spans: Sequence[Tensor], samples: int, seq_len: int, seed: int,
                        field: str = "calibration") -> Tensor:
    """``samples`` windows of ``seq_len`` consecutive training tokens, [samples, seq_len], drawn with ``seed``.

    Every start position of every span is equally likely (SparseGPT and Wanda draw random
    windows of their calibration text the same way); the draw does not depend on the world
    size, so ranks split the same windows.
    """
    starts = torch.tensor([max(0, s.numel() - seq_len + 1) for s in spans], dtype=torch.long)
    total = int(starts.sum())
    if total == 0:
        longest = max((s.numel() for s in spans), default=0)
        raise ConfigError(f"{field}.seq_len", f"{seq_len} tokens is longer than every run of training text "
                          f"(the longest is {longest} tokens between held-out blocks)",
                          "lower seq_len, or raise task.validation_every (longer runs) or task.max_length")
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(total, (samples,), generator=gen)
    bounds = torch.cumsum(starts, 0)
    out = torch.empty(samples, seq_len, dtype=torch.long)
    for row, pick in enumerate(picks.tolist()):
        span = int(torch.searchsorted(bounds, pick, right=True))
        start = pick - (int(bounds[span - 1]) if span else 0)
        out[row] = spans[span][start:start + seq_len]
    return out
