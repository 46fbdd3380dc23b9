"""Pure step -> value schedules for sparsity and learning rate."""
from .lr import LRSchedule
from .sparsity import ACDC, Constant, Dense, Gradual, OneShot, SparsitySchedule

__all__ = ["LRSchedule", "SparsitySchedule", "Dense", "Constant", "OneShot", "Gradual", "ACDC"]
