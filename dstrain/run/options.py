"""Run-level options and hooks: where and how a recipe is trained, not what.

Why apart from the recipe: the same recipe runs on a laptop and on 64 GPUs, into one
folder or another, resumed or not; none of that may change what it computes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional


@dataclass
class TrainerOptions:
    """Run-level options (not part of the recipe: where and how, not what)."""

    output_dir: Path
    ds_config: Dict[str, Any] = field(default_factory=dict)
    save_every: int = 0  # optimizer steps between checkpoints; 0 = at each evaluation only
    keep_last: int = 2
    resume: Optional[str] = None  # None | "auto" | checkpoint folder
    max_steps: Optional[int] = None  # stop early (after a checkpoint), e.g. to test resume; 0 = evaluate only
    progress: bool = True
    tensorboard: bool = True
    num_workers: int = 0
    overwrite: bool = False  # a fresh run may discard checkpoints already in output_dir


class TrainerCallback:
    """Hooks into the loop (like transformers' TrainerCallback); override what you need.

    Each hook gets the running :class:`~dstrain.run.trainer.SparseTrainer`.
    """

    def on_step_end(self, trainer: Any) -> None:
        """After every applied optimizer step (and the recipe scheduler's update)."""
