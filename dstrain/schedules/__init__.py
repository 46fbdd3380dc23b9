"""Pure step -> value schedules for sparsity and learning rate."""
from dstrain.schedules.lr import LRSchedule
from dstrain.schedules.sparsity import (
    ACDC,
    Constant,
    Dense,
    Gradual,
    OneShot,
    SparsitySchedule,
)

__all__ = ["LRSchedule", "SparsitySchedule", "Dense", "Constant", "OneShot", "Gradual", "ACDC"]
