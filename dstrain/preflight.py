"""Run options checked before any data is read or any step is taken.

Why here and not in argparse: the same :class:`~dstrain.trainer.TrainerOptions` come
from ``launch/train.py``, ``dstrain train`` and Python callers; each wrong value is
one :class:`~dstrain.errors.ConfigError` line naming the flag.  The output folder is
probed for writing up front because a read-only folder used to fail only at the
first checkpoint, after minutes (or hours) of training.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError


def _int(flag: str, value: Any, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(flag, f"{value!r} is not an integer >= {minimum}", fix)


def check_run_options(save_every: int, max_steps: Optional[int], num_workers: int, keep_last: int) -> None:
    _int("--save_every", save_every, 0, "pass the optimizer steps between checkpoints, or 0 for one per epoch")
    if max_steps is not None:
        _int("--max_steps", max_steps, 1, "pass a positive step count, or leave it out to train the whole recipe")
    _int("--num_workers", num_workers, 0, "pass 0 (the recipe's task.num_workers, or load in the main process) "
                                          "or a positive number of loader processes")
    _int("keep_last", keep_last, 0, "keep at least 0 old checkpoints (0 keeps all)")


def check_output_dir(output_dir: Path, flag: str = "--output_dir") -> None:
    """Create ``output_dir`` and prove that a file can be written there."""
    output_dir = Path(output_dir)
    for parent in [output_dir, *output_dir.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(flag, f"{parent} is a file, not a folder", "pass a folder path for the run's output")
            break
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for folder in (output_dir, output_dir / "checkpoints"):
            if folder.is_dir():
                fd, probe = tempfile.mkstemp(dir=folder, prefix=".dstrain-write-probe.")
                os.close(fd)
                os.unlink(probe)
    except OSError as err:
        raise ConfigError(flag, f"cannot write to {output_dir} ({err.strerror or err})",
                          "pass a writable folder, or fix its permissions") from None
