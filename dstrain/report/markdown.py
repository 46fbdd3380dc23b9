"""The report's tables in Markdown: one row per run (or per recipe over seeds), and the effect of longer training."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from dstrain.report.runs import (
    Run,
    _best,
    _diff,
    _gap,
    dense_reference,
    late_drop,
    mean_mask_change,
)
from dstrain.report.seeds import NOISE_SE, Stat, seed_length_effects, seed_rows


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
