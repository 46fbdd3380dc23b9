"""Finished runs read back from their folders, and what one run says about itself against its dense reference."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from dstrain.errors import ConfigError
from dstrain.run.rundir import RunDir

DENSE_SPARSITY = 0.01  # a run whose weights never pass this sparsity counts as dense


@dataclass
class Run:
    path: Path
    label: str
    recipe: Dict[str, Any]
    rows: List[Dict[str, Any]]
    result: Optional[Dict[str, Any]]

    @property
    def recipe_name(self) -> str:
        return str(self.recipe.get("name", self.label))

    @property
    def seed(self) -> int:
        return int(self.recipe.get("training", {}).get("seed", 0))

    @property
    def epochs(self) -> float:
        return float(self.recipe.get("training", {}).get("epochs", self.rows[-1]["epoch"]))

    @property
    def schedule(self) -> Dict[str, Any]:
        return self.recipe.get("pruning", {}).get("schedule", {}) or {"kind": "dense"}

    @property
    def kind(self) -> str:
        return str(self.schedule.get("kind", "dense"))

    @property
    def target_sparsity(self) -> float:
        s = self.schedule
        return float(s.get("final_sparsity", s.get("sparsity", 0.0)) or 0.0)

    @property
    def metric(self) -> str:
        return (self.result or {}).get("metric") or "accuracy"

    @property
    def finished(self) -> bool:
        return self.result is not None and not self.result.get("stopped_early", False)

    @property
    def is_dense(self) -> bool:
        sparsities = [r.get("sparsity") or 0.0 for r in self.rows]
        return self.kind == "dense" or max(sparsities, default=0.0) < DENSE_SPARSITY

    @property
    def method(self) -> str:
        return "dense" if self.is_dense else f"{self.kind} {self.target_sparsity * 100:g}%"

    def final(self, key: str) -> Optional[float]:
        return self.rows[-1].get(key)

    def series(self, key: str) -> List[Optional[float]]:
        return [r.get(key) for r in self.rows]


# --- loading ---------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(str(path), f"is not valid JSON ({err})", "re-run the training job or delete the file") from None


def load_run(path: Path | str) -> Run:
    """Load one run folder; ConfigError names the folder and the missing or broken file."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(str(path), "does not exist" if not path.exists() else "is not a folder",
                          "pass run folders written by SparseTrainer (launch/train.py --output_dir DIR "
                          "writes DIR/<recipe name>)")
    for name in (RunDir(path).metrics.name, RunDir(path).recipe.name):
        if not (path / name).is_file():
            raise ConfigError(str(path), f"has no {name}",
                              "pass a run folder written by SparseTrainer (it writes recipe.json at start and "
                              "metrics.jsonl after each evaluated epoch)")
    rows = []
    for i, line in enumerate((path / "metrics.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path / 'metrics.jsonl'}:{i}", f"is not valid JSON ({err})",
                              "re-run the training job") from None
    if not rows:
        raise ConfigError(str(path / "metrics.jsonl"), "is empty: the run stopped before its first evaluation",
                          "let it finish at least one epoch, or leave the folder out")
    result = _read_json(path / "result.json") if (path / "result.json").is_file() else None
    return Run(path=path, label=path.name, recipe=_read_json(path / "recipe.json"), rows=rows, result=result)


def expand_run_dirs(paths: Sequence[Path | str]) -> List[Path]:
    """Each path is a run folder, or a folder whose sub-folders are run folders."""
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "metrics.jsonl").exists():
            children = sorted(c for c in p.iterdir() if c.is_dir() and (c / "metrics.jsonl").is_file())
            if children:
                out.extend(children)
                continue
        out.append(p)
    return out


def load_runs(paths: Sequence[Path | str]) -> List[Run]:
    if not paths:
        raise ConfigError("RUN_DIR", "no run folders given", "pass at least one run folder")
    runs = [load_run(p) for p in expand_run_dirs(paths)]
    seen: Dict[str, int] = {}
    for run in runs:  # two folders with the same name (e.g. a/dense, b/dense): keep labels unique
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.path.parent.name}/{run.label}"
    return runs


# --- comparisons -----------------------------------------------------------------------------
def dense_reference(run: Run, runs: Sequence[Run]) -> Optional[Run]:
    """The dense run to compare ``run`` with: same length if possible, then the same seed, named 'dense' preferred."""
    dense = [r for r in runs if r.is_dense]
    if not dense:
        return None
    if run.is_dense:
        return run

    def key(r: Run):
        named = "dense" in r.label.lower() or "dense" in r.recipe_name.lower()
        return (abs(r.epochs - run.epochs), r.seed != run.seed, not named, runs.index(r))

    return min(dense, key=key)


def _gap(run: Run, ref: Optional[Run]) -> Optional[float]:
    a, b = run.final("train_loss"), ref.final("train_loss") if ref else None
    return None if a is None or b is None else a - b


def late_drop(run: Run, fraction: float = 0.25) -> Optional[float]:
    """Training-loss fall over the last ``fraction`` of evaluated epochs (>0: still improving)."""
    losses = [(r["epoch"], r["train_loss"]) for r in run.rows if r.get("train_loss") is not None]
    if len(losses) < 2:
        return None
    cutoff = losses[-1][0] - fraction * run.epochs
    earlier = [loss for epoch, loss in losses if epoch <= cutoff]
    start = earlier[-1] if earlier else losses[0][1]
    return start - losses[-1][1]


def mean_mask_change(run: Run) -> Optional[float]:
    values = [v for v in run.series("mask_change_rate") if v is not None]
    return sum(values) / len(values) if values else None


def _best(run: Run) -> Optional[float]:
    values = [v for v in run.series(f"val_{run.metric}") if v is not None]
    return max(values) if values else None


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b
