"""Random images for throughput measurements (no I/O, no decoding).

A pool of at most 512 distinct images is generated once and indexed modulo its
size, so the loader costs a memory copy per batch and the measurement is of the
model, optimizer and communication, which is what a sparse-vs-dense comparison
needs.  Not for accuracy: the labels carry no signal.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch.utils.data import Dataset


class SyntheticImages(Dataset):
    def __init__(self, length: int, image_size: int, num_classes: int, seed: int = 0, pool: int = 512) -> None:
        gen = torch.Generator().manual_seed(seed)
        n = min(length, pool)
        self.images = torch.randn(n, 3, image_size, image_size, generator=gen)
        self.labels = torch.randint(0, num_classes, (n,), generator=gen)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        i = index % len(self.images)
        return self.images[i], self.labels[i]
