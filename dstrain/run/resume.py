"""Resume only what was started: the checkpoint's recipe against the resuming run's.

A checkpoint's manifest stores the recipe it was trained under.  DeepSpeed would load
it under any other recipe (a dense recipe on a sparse run revives pruned weights;
another optimizer dies later with ``KeyError``), so any difference is refused, naming the first differing fields, except the fields in
:data:`SAFE_TO_CHANGE`: they change how the run is observed or fed, not what it
computes.  (A fresh run into a folder that already holds checkpoints is refused by
:meth:`dstrain.run.rundir.RunDir.guard_fresh_run`.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

from dstrain.errors import ConfigError

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
    "training.guard",         # when a diverged run is stopped, not what a healthy one computes
)
BITWISE_BACKENDS = ("sgd",)
"""Optimizers whose step is bit-identical on every backend (torch, cpu, triton), so ``optimizer.backend`` may
change on resume; AdamW's parameters differ by 1-2 ulp between backends (a correctly rounded sqrt in the
fused kernels), so a resumed AdamW run would not continue the interrupted one exactly
(tests/test_run_resume.py)."""


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
    safe = SAFE_TO_CHANGE
    if old.get("optimizer.name") in BITWISE_BACKENDS and new.get("optimizer.name") == old.get("optimizer.name"):
        safe = safe + ("optimizer.backend",)
    keys = list(new) + [k for k in old if k not in new]
    missing = object()
    out = []
    for key in keys:
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b and not any(key == s or key.startswith(s + ".") for s in safe):
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
