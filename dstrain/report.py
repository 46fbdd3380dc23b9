"""Under-training diagnostics: compare finished runs against dense runs of the same length.

    python -m dstrain.report runs/dense_1x runs/gmp90_1x runs/gmp90_3x --out report/
    python -m dstrain.report runs/ --out report/          # every run folder inside runs/
    dstrain report runs/ --out report/                    # the same, via the console entry point
    dstrain report runs/                                  # report.md and report.png go into runs/

Reads each run folder written by :class:`~dstrain.trainer.SparseTrainer`
(``metrics.jsonl``, ``recipe.json`` and, once finished, ``result.json``) and writes

* ``report.png``: validation accuracy, training loss and weight sparsity per epoch, one line
  per run (colour = method and sparsity, line style = run length);
* ``report.md``: one row per run (final sparsity, final and best validation score, final
  training loss and its gap to the dense reference run, mean mask change rate, how much the
  training loss still fell over the last quarter of training), and a second table with the
  effect of longer training for each method seen at several lengths.

Sparse models are under-trained when their training loss stays well above the dense
model's and is still falling at the end; if a longer schedule shrinks that gap, the
standard schedule was too short for them.  The dense reference of a run is the dense run
(no pruning) of the same length when there is one, else the dense run closest in length;
runs named "dense" are preferred.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .errors import ConfigError

RUN_FILES = ("metrics.jsonl", "recipe.json")
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
    for name in RUN_FILES:
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


def _pm(stat: Optional[Stat], scale: float = 1.0, fmt: str = "{:.4f}", signed: bool = False) -> str:
    if stat is None:
        return "–"
    text = _num(stat.mean * scale, fmt, signed)
    return text if stat.se is None else f"{text} ± {fmt.format(stat.se * scale)}"


def _noise(stat: Optional[Stat]) -> str:
    flag = None if stat is None else stat.exceeds_noise
    return "–" if flag is None else ("yes" if flag else "no")


def seed_markdown(runs: Sequence[Run]) -> str:
    """The across-seeds tables ('' unless some recipe was run with several seeds)."""
    rows = seed_rows(runs)
    if not any(len(r["seeds"]) > 1 for r in rows):
        return ""
    acc = all(r["metric"] in ("accuracy", "top5") for r in rows)
    scale, unit, pts, fmt = (100.0, " (%)", " (pts)", "{:.2f}") if acc else (1.0, "", "", "{:.4f}")
    lines = [
        "", "## Across seeds (mean ± standard error)", "",
        "Finished runs of the same recipe that differ only in `training.seed`. Δ and gap are taken against the "
        "dense run of the same length and seed, then averaged over seeds; ± is the standard error of the mean "
        f"(no ± with one seed). A difference *exceeds noise* when it is more than {NOISE_SE:g} standard errors "
        "from zero.", "",
        f"| Recipe | Method | Epochs | Seeds | Final val score{unit} | Δ score vs dense{pts} | Δ exceeds noise "
        "| Final train loss | Train-loss gap to dense | Gap exceeds noise |",
        "|---|---|---:|---|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        dense = r["is_dense"]
        lines.append(
            f"| {r['recipe']} | {r['method']} | {_epochs(r['epochs'])} | {','.join(map(str, r['seeds']))} "
            f"| {_pm(r['score'], scale, fmt)} | {'0 (ref)' if dense else _pm(r['d_score'], scale, fmt, True)} "
            f"| {'' if dense else _noise(r['d_score'])} | {_pm(r['train_loss'])} "
            f"| {'0 (ref)' if dense else _pm(r['gap'], signed=True)} | {'' if dense else _noise(r['gap'])} |")
    effects = seed_length_effects(runs)
    if effects:
        lines += [
            "", "### Longer training across seeds", "",
            "Gap closed = 1 − (gap at the longest length / gap at the shortest); the change columns say "
            f"whether the long-minus-short difference exceeds {NOISE_SE:g} standard errors (added in quadrature).",
            "", f"| Method | Epochs | Δ score vs dense{pts}, short → long | Δ change exceeds noise "
            "| Train-loss gap, short → long | Gap closed | Gap change exceeds noise |",
            "|---|---|---|---|---|---:|---|",
        ]
        for e in effects:
            closed = "–" if e["gap_closed"] is None else f"{e['gap_closed'] * 100:.0f}%"
            lines.append(
                f"| {e['method']} | {_epochs(e['short']['epochs'])} → {_epochs(e['long']['epochs'])} "
                f"| {_pm(e['short']['d_score'], scale, fmt, True)} → {_pm(e['long']['d_score'], scale, fmt, True)} "
                f"| {_noise(e['d_score_change'])} "
                f"| {_pm(e['short']['gap'], signed=True)} → {_pm(e['long']['gap'], signed=True)} "
                f"| {closed} | {_noise(e['gap_change'])} |")
    return "\n".join(lines) + "\n"


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


# --- formatting ------------------------------------------------------------------------------
def _num(value: Optional[float], fmt: str = "{:.4f}", signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if float(fmt.format(value)) == 0:  # print 0.0000, not -0.0000
        value = 0.0
    return (("+" if value >= 0 else "") if signed else "") + fmt.format(value)


def _score(run: Run, value: Optional[float]) -> str:
    if run.metric in ("accuracy", "top5") and value is not None:
        return f"{value * 100:.2f}"
    return _num(value)


def _epochs(value: float) -> str:
    return f"{value:g}"


def summary_rows(runs: Sequence[Run]) -> List[Dict[str, Any]]:
    """One dict per run with every number of the main table (also handy for tests and scripts)."""
    out = []
    for run in runs:
        ref = dense_reference(run, runs)
        out.append({
            "run": run.label + ("" if run.finished else " (unfinished)"), "recipe": run.recipe_name,
            "epochs": run.epochs, "method": run.method, "metric": run.metric,
            "final_sparsity": run.final("sparsity"), "final_score": run.final(f"val_{run.metric}"),
            "best_score": _best(run), "final_train_loss": run.final("train_loss"),
            "dense_ref": ref.label if ref is not None else None, "train_loss_gap": _gap(run, ref),
            "mean_mask_change": mean_mask_change(run), "late_drop": late_drop(run),
        })
    return out


def length_effects(runs: Sequence[Run]) -> List[Dict[str, Any]]:
    """For each method seen at several lengths: how the shortest and longest runs compare."""
    groups: Dict[str, List[Run]] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    out = []
    for method, group in groups.items():
        lengths = sorted({r.epochs for r in group})
        if len(lengths) < 2:
            continue
        short = next(r for r in group if r.epochs == lengths[0])
        long = next(r for r in group if r.epochs == lengths[-1])
        out.append({
            "method": method, "short": short, "long": long,
            "d_score": _diff(long.final(f"val_{long.metric}"), short.final(f"val_{short.metric}")),
            "d_train_loss": _diff(long.final("train_loss"), short.final("train_loss")),
            "gap_short": _gap(short, dense_reference(short, runs)),
            "gap_long": _gap(long, dense_reference(long, runs)),
        })
    return out


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def markdown(runs: Sequence[Run]) -> str:
    acc = all(r.metric in ("accuracy", "top5") for r in runs)
    score_unit = " (%)" if acc else ""
    metric = runs[0].metric if len({r.metric for r in runs}) == 1 else "score"
    lines = [
        "# Sparse training report", "",
        f"{len(runs)} run(s). Train-loss gap = final training loss minus that of the dense reference run "
        "(same length when available); a large positive gap that shrinks with longer training means the "
        "sparse run was under-trained. *Late drop* = how much the training loss still fell over the last "
        "25% of training (> 0: still improving when training stopped).", "",
        f"| Run | Recipe | Epochs | Final sparsity | Final val {metric}{score_unit} | Best val {metric}{score_unit} "
        "| Final train loss | Dense ref | Train-loss gap | Mean mask change | Late drop |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for run, row in zip(runs, summary_rows(runs)):
        gap = "0 (ref)" if row["dense_ref"] == run.label and run.is_dense else _num(row["train_loss_gap"], signed=True)
        lines.append(
            f"| {row['run']} | {row['recipe']} | {_epochs(row['epochs'])} | {_num(row['final_sparsity'])} "
            f"| {_score(run, row['final_score'])} | {_score(run, row['best_score'])} "
            f"| {_num(row['final_train_loss'])} | {row['dense_ref'] or '–'} | {gap} "
            f"| {_num(row['mean_mask_change'])} | {_num(row['late_drop'], signed=True)} |")
    effects = length_effects(runs)
    if effects:
        lines += [
            "", "## Effect of longer training", "",
            "Same method and target sparsity at its shortest and longest length (Δ = long − short).", "",
            f"| Method | Epochs | Δ final val {metric}{' (pts)' if acc else ''} | Δ final train loss "
            "| Train-loss gap to dense, short → long |",
            "|---|---|---:|---:|---|",
        ]
        for e in effects:
            d_score = e["d_score"] * 100 if (acc and e["d_score"] is not None) else e["d_score"]
            lines.append(
                f"| {e['method']} | {_epochs(e['short'].epochs)} → {_epochs(e['long'].epochs)} "
                f"| {_num(d_score, '{:.2f}' if acc else '{:.4f}', signed=True)} "
                f"| {_num(e['d_train_loss'], signed=True)} "
                f"| {_num(e['gap_short'], signed=True)} → {_num(e['gap_long'], signed=True)} |")
    if not any(r.is_dense for r in runs):
        lines += ["", "No dense run among these: the train-loss gap needs a run without pruning."]
    seeds_md = seed_markdown(runs)
    if seeds_md:
        lines.append(seeds_md.rstrip("\n"))
    unfinished = [r.label for r in runs if not r.finished]
    if unfinished:
        lines += ["", f"Unfinished (no result.json or stopped early): {', '.join(unfinished)}."]
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in runs))
    lengths = sorted({r.epochs for r in runs})
    styles = ["--", "-", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    panels = [("val_{metric}", "validation score", axes[0]), ("train_loss", "training loss", axes[1]),
              ("sparsity", "weight sparsity", axes[2])]
    for run in runs:
        epochs = [r["epoch"] for r in run.rows]
        color = colors[methods.index(run.method) % len(colors)]
        style = styles[lengths.index(run.epochs) % len(styles)] if len(lengths) > 1 else "-"
        for key, _, ax in panels:
            values = run.series(key.format(metric=run.metric))
            points = [(e, v) for e, v in zip(epochs, values) if v is not None]
            if points:
                ax.plot(*zip(*points), style, color=color, label=f"{run.label} ({_epochs(run.epochs)} ep)",
                        marker="." if len(points) < 15 else None)
    metric = runs[0].metric if len({r.metric for r in runs}) == 1 else "score"
    axes[0].set_ylabel(f"val {metric}")
    axes[1].set_ylabel("train loss")
    if all((r.get("train_loss") or 0) > 0 for run in runs for r in run.rows):
        axes[1].set_yscale("log")
    axes[2].set_ylabel("weight sparsity")
    for _, title, ax in panels:
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dirs: Sequence[Path | str], out: Path | str) -> Dict[str, Path]:
    """Writes OUT/report.md and OUT/report.png; returns their paths."""
    runs = load_runs(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / "report.md", out / "report.png"
    md.write_text(markdown(runs))
    seeded = any(len(g) > 1 for g in seed_groups(runs).values())
    plot(mean_curves(runs) if seeded else runs, png)  # several seeds: one mean curve per recipe
    return {"md": md, "png": png}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dstrain report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folder (with metrics.jsonl), or a folder of run folders")
    p.add_argument("--out", default=None, metavar="OUT_DIR",
                   help="where report.md and report.png go (default: the first RUN_DIR)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = args.run_dirs[0]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        paths = write_report(args.run_dirs, args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print(f"wrote {paths['md']} and {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
