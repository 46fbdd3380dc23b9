"""The run folder: every file a training run writes, named in one place.

Why one class: the trainer writes these files, ``--overwrite`` and the fresh-run guard
delete or protect them, ``dstrain report`` reads them back and ``dstrain verify`` finds
the checkpoints in them; a list kept in each of those places drifts.

    OUTPUT_DIR/<recipe name>/
        recipe.json        the validated recipe the run trains under
        metrics.jsonl      one row per evaluation (train loss, validation metrics, sparsity)
        result.json        the run's outcome, written when it ends
        tb/                TensorBoard event files
        final_model/       the task's own export format, when it has one
        checkpoints/       step folders with manifests (:mod:`dstrain.run.checkpoints`)
        .dstrain-run.lock  held while a run writes here: one run per folder (:mod:`dstrain.run.lock`)
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Tuple, Union

from dstrain.errors import ConfigError


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: Union[str, Path]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def final_model(self) -> Path:
        return self.root / "final_model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def lock(self) -> Path:
        """Held by the run writing this folder (:mod:`dstrain.run.lock`)."""
        return self.root / ".dstrain-run.lock"

    def run_files(self) -> Tuple[Path, ...]:
        """What a run writes besides its checkpoints (``--overwrite`` removes these with them)."""
        return (self.recipe, self.metrics, self.result, self.tensorboard, self.final_model)

    def holds_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())

    def write(self, path: Path, text: str) -> None:
        """Write one of the run's files; a failure (a full disk, a permission) is one line naming the file."""
        try:
            path.write_text(text)
        except OSError as err:
            raise ConfigError("--output_dir", f"cannot write {path} ({err.strerror or err}); the checkpoints "
                              f"already written under {self.checkpoints} are kept",
                              "free space or fix the folder's permissions, then continue with --resume auto") from None

    def is_run(self) -> bool:
        """True if this looks like a run folder (what ``dstrain report`` can read)."""
        return self.metrics.is_file() and self.recipe.is_file()

    # --- before a run --------------------------------------------------------------
    def check_writable(self, flag: str = "--output_dir") -> None:
        """Create the folder and prove that a file can be written there (a read-only folder would
        otherwise fail at the first checkpoint, after minutes or hours of training)."""
        for parent in [self.root, *self.root.parents]:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(flag, f"{parent} is a file, not a folder", "pass a folder path for the run's output")
                break
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for folder in (self.root, self.checkpoints):
                if folder.is_dir():
                    fd, probe = tempfile.mkstemp(dir=folder, prefix=".dstrain-write-probe.")
                    os.close(fd)
                    os.unlink(probe)
        except OSError as err:
            raise ConfigError(flag, f"cannot write to {self.root} ({err.strerror or err})",
                              "pass a writable folder, or fix its permissions") from None

    def guard_fresh_run(self, resume: Any, overwrite: bool, is_main: bool) -> None:
        """A fresh run must not mix with another run's checkpoints: refuse, or with ``overwrite`` discard them.

        (Checkpoint rotation would delete the new run's checkpoints and keep the old run's
        higher step numbers.)
        """
        if resume or (overwrite and not is_main) or not self.holds_checkpoints():
            return
        if not overwrite:
            held = sorted(p.name for p in self.checkpoints.iterdir() if not p.name.startswith("."))
            raise ConfigError("--output_dir", f"{self.root} already holds checkpoints of a run "
                              f"({', '.join(held[-2:]) or '.staging'})",
                              "pass --resume auto to continue it, --overwrite to discard it, or another --output_dir")
        if is_main:
            shutil.rmtree(self.checkpoints)
            for path in self.run_files():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
