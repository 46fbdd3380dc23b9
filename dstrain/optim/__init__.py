"""Masked optimizers: torch.optim semantics, pruned weights and their state held at exactly 0."""
from dstrain.optim.adamw import MaskedAdamW
from dstrain.optim.base import MaskSource
from dstrain.optim.functional import masked_adamw, masked_sgd
from dstrain.optim.sgd import MaskedSGD

__all__ = ["MaskedSGD", "MaskedAdamW", "MaskSource", "masked_sgd", "masked_adamw"]
