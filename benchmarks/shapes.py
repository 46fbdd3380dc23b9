"""Parameter shape lists of the benchmark models (no weights, no downloads).

ResNet50 comes from torchvision built on the meta device (161 tensors, ~25.6M
params); BERT-base is written out from its published config (hidden 768, 12 layers,
intermediate 3072, vocab 30522, 512 positions, 2 token types, with pooler:
199 tensors, ~109.5M params) so no hub access is needed.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

Shape = Tuple[int, ...]


def resnet50_shapes() -> List[Shape]:
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.resnet50()
    return [tuple(p.shape) for p in model.parameters()]


def bert_base_shapes(hidden: int = 768, layers: int = 12, intermediate: int = 3072, vocab: int = 30522,
                     max_positions: int = 512, type_vocab: int = 2) -> List[Shape]:
    h = hidden
    shapes: List[Shape] = [(vocab, h), (max_positions, h), (type_vocab, h), (h,), (h,)]  # embeddings + LN
    for _ in range(layers):
        shapes += [(h, h), (h,)] * 3  # query, key, value
        shapes += [(h, h), (h,), (h,), (h,)]  # attention output dense + LayerNorm
        shapes += [(intermediate, h), (intermediate,)]  # intermediate dense
        shapes += [(h, intermediate), (h,), (h,), (h,)]  # output dense + LayerNorm
    shapes += [(h, h), (h,)]  # pooler
    return shapes


def smoke_shapes() -> List[Shape]:
    """A few tiny tensors for DSTRAIN_BENCH_SMOKE=1 (checks the benchmark code on a CPU)."""
    return [(8, 3, 3, 3), (8,), (16, 8), (16,), (5, 7)]


MODELS = {"resnet50": resnet50_shapes, "bert_base": bert_base_shapes}
