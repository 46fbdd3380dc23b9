"""Run options checked before any data is read or any step is taken.

Why here and not in argparse: the same :class:`~dstrain.run.trainer.TrainerOptions` come
from ``launch/train.py``, ``dstrain train`` and Python callers; each wrong value is
one :class:`~dstrain.errors.ConfigError` line naming the flag.
"""
from __future__ import annotations

from typing import Any, Optional

from dstrain.errors import ConfigError


def _int(flag: str, value: Any, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(flag, f"{value!r} is not an integer >= {minimum}", fix)


def check_run_options(save_every: int, max_steps: Optional[int], num_workers: int, keep_last: int,
                      resume: Optional[str] = None, overwrite: bool = False) -> None:
    _int("--save_every", save_every, 0, "pass the optimizer steps between checkpoints, or 0 for one per epoch")
    if max_steps is not None:
        _int("--max_steps", max_steps, 0, "pass a step count (0: evaluate only, after the recipe's step-0 pruning), "
                                          "or leave it out to train the whole recipe")
    _int("--num_workers", num_workers, 0, "pass 0 (the recipe's task.num_workers, or load in the main process) "
                                          "or a positive number of loader processes")
    _int("keep_last", keep_last, 0, "keep at least 0 old checkpoints (0 keeps all)")
    if resume and overwrite:
        raise ConfigError("--overwrite", f"given with --resume {resume}: one continues the run in the folder, "
                          "the other discards it", "pass one of them")
