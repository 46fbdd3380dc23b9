"""Runs repeated over seeds: means with standard errors, differences, and whether they exceed noise."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from dstrain.report.runs import Run, _diff, _gap, dense_reference

# --- across seeds ----------------------------------------------------------------------------
NOISE_SE = 2.0  # a difference "exceeds noise" when it is more than this many standard errors from 0


@dataclass
class Stat:
    """Mean of ``n`` values and its standard error (None for a single value: no noise estimate)."""

    mean: float
    se: Optional[float]
    n: int

    @property
    def exceeds_noise(self) -> Optional[bool]:
        return None if self.se is None else abs(self.mean) > NOISE_SE * self.se


def mean_se(values: Sequence[Optional[float]]) -> Optional[Stat]:
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    n, mean = len(vals), sum(vals) / len(vals)
    se = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n) if n > 1 else None
    return Stat(mean, se, n)


def diff_stat(a: Optional[Stat], b: Optional[Stat]) -> Optional[Stat]:
    """a − b for independent estimates: standard errors add in quadrature."""
    if a is None or b is None:
        return None
    se = math.sqrt(a.se ** 2 + b.se ** 2) if a.se is not None and b.se is not None else None
    return Stat(a.mean - b.mean, se, min(a.n, b.n))


def seed_groups(runs: Sequence[Run]) -> Dict[str, List[Run]]:
    """Finished runs of the same recipe (they differ only in training.seed), in order of appearance."""
    groups: Dict[str, List[Run]] = {}
    for run in runs:
        if run.finished:
            groups.setdefault(run.recipe_name, []).append(run)
    return groups


def _score_diff(run: Run, ref: Optional[Run]) -> Optional[float]:
    return _diff(run.final(f"val_{run.metric}"), ref.final(f"val_{ref.metric}") if ref else None)


def seed_rows(runs: Sequence[Run]) -> List[Dict[str, Any]]:
    """Per recipe, mean ± standard error over seeds of the final score, final train loss, and the
    score difference and train-loss gap to the dense run of the same length and seed (paired by seed)."""
    finished = [r for r in runs if r.finished]
    out = []
    for name, group in seed_groups(runs).items():
        refs = [dense_reference(r, finished) for r in group]
        out.append({
            "recipe": name, "method": group[0].method, "epochs": group[0].epochs, "metric": group[0].metric,
            "seeds": sorted(r.seed for r in group), "is_dense": group[0].is_dense,
            "score": mean_se([r.final(f"val_{r.metric}") for r in group]),
            "train_loss": mean_se([r.final("train_loss") for r in group]),
            "d_score": mean_se([_score_diff(r, ref) for r, ref in zip(group, refs)]),
            "gap": mean_se([_gap(r, ref) for r, ref in zip(group, refs)]),
        })
    return out


def seed_length_effects(runs: Sequence[Run]) -> List[Dict[str, Any]]:
    """For each sparse method at two or more lengths: its seed means at the shortest and longest."""
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for row in seed_rows(runs):
        if not row["is_dense"]:
            by_method.setdefault(row["method"], []).append(row)
    out = []
    for method, rows in by_method.items():
        if len({r["epochs"] for r in rows}) < 2:
            continue
        short, long = min(rows, key=lambda r: r["epochs"]), max(rows, key=lambda r: r["epochs"])
        closed = None
        if short["gap"] is not None and long["gap"] is not None and short["gap"].mean > 0:
            closed = 1 - long["gap"].mean / short["gap"].mean
        out.append({"method": method, "short": short, "long": long, "gap_closed": closed,
                    "gap_change": diff_stat(long["gap"], short["gap"]),
                    "d_score_change": diff_stat(long["d_score"], short["d_score"])})
    return out


def mean_curves(runs: Sequence[Run]) -> List[Run]:
    """One run per recipe whose per-epoch rows are the mean over its seeds (for the plot)."""
    out: List[Run] = []
    for name, group in seed_groups(runs).items():
        if len(group) == 1:
            out.append(group[0])
            continue
        rows = []
        for i in range(min(len(r.rows) for r in group)):
            keys = ("epoch", "train_loss", "sparsity", f"val_{group[0].metric}")
            rows.append({k: (mean_se([r.rows[i].get(k) for r in group]) or Stat(float("nan"), None, 0)).mean
                         for k in keys})
        out.append(Run(path=group[0].path, label=f"{name} (mean of {len(group)})", recipe=group[0].recipe,
                       rows=rows, result=group[0].result))
    return out
