"""Resume only what was started: recipe comparison and the output-folder guard.

A checkpoint's manifest stores the recipe it was trained under.  Resuming it under
another recipe used to be accepted silently (a dense recipe on a sparse run revived
pruned weights; another optimizer died later with ``KeyError``), so any difference
is refused, naming the first differing fields, except the fields in
:data:`SAFE_TO_CHANGE`: they change how the run is observed or fed, not what it
computes.  A fresh run into a folder that already holds checkpoints is refused too
(checkpoint rotation would delete the new run's checkpoints and keep the old run's
higher step numbers); ``--overwrite`` discards them first.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

from .errors import ConfigError

#: Recipe fields that may differ between a checkpoint and the run resuming it.
#: Anything else changes the computation and is refused.
SAFE_TO_CHANGE = (
    "name",                   # label only (the output folder comes from --output_dir)
    "description",
    "training.eval_every",    # when to evaluate, not what is trained
    "task.num_workers",       # data-loader processes: same batches, same order
    "task.pin_memory",
    "task.data_dir",          # the same data moved to another path
    "task.compile",           # torch.compile: same model, another executor
    "optimizer.backend",      # torch and triton steps are bit-identical (tests/test_optim.py)
)
#: Files and folders a run writes besides checkpoints; --overwrite removes them with the checkpoints
#: (old TensorBoard events would otherwise mix into the new run's curves).
RUN_FILES = ("metrics.jsonl", "result.json", "recipe.json")
RUN_DIRS = ("tb", "final_model")


def _flatten(data: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], data


def recipe_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """(field, saved value, current value) for every differing leaf not in SAFE_TO_CHANGE, in the
    current recipe's order (the manifest stores keys sorted); a field only one side has shows as None."""
    old, new = dict(_flatten(saved)), dict(_flatten(current))
    keys = list(new) + [k for k in old if k not in new]
    missing = object()
    out = []
    for key in keys:
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b and not any(key == s or key.startswith(s + ".") for s in SAFE_TO_CHANGE):
            out.append((key, None if a is missing else a, None if b is missing else b))
    return out


def check_recipe(checkpoint: Path, saved: Dict[str, Any], current: Dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` (trained under ``saved``) with a different ``current`` recipe."""
    diffs = recipe_differences(saved, current)
    if not diffs:
        return
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:3])
    more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    raise ConfigError("--resume", f"checkpoint {checkpoint.name} was trained under another recipe ({shown}{more})",
                      "resume with the recipe it was started with (its recipe.json), or start a new run in "
                      "another --output_dir; only " + ", ".join(SAFE_TO_CHANGE) + " may change on resume")


def guard_output_dir(output_dir: Path, resume: Any, overwrite: bool, is_main: bool) -> None:
    """A fresh run must not mix with another run's checkpoints: refuse, or with ``overwrite`` discard them."""
    checkpoints = Path(output_dir) / "checkpoints"
    if resume or (overwrite and not is_main) or not checkpoints.is_dir() or not any(checkpoints.iterdir()):
        return
    if not overwrite:
        held = sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith("."))
        raise ConfigError("--output_dir", f"{output_dir} already holds checkpoints of a run "
                          f"({', '.join(held[-2:]) or '.staging'})",
                          "pass --resume auto to continue it, --overwrite to discard it, or another --output_dir")
    if is_main:
        shutil.rmtree(checkpoints)
        for name in RUN_FILES:
            (Path(output_dir) / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(Path(output_dir) / name, ignore_errors=True)
