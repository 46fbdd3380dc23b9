"""Masked optimizers: torch.optim semantics, pruned weights and their state held at exactly 0."""
from .adamw import MaskedAdamW
from .base import MaskSource
from .functional import masked_adamw, masked_sgd
from .sgd import MaskedSGD

__all__ = ["MaskedSGD", "MaskedAdamW", "MaskSource", "masked_sgd", "masked_adamw"]
