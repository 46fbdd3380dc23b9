"""Tables, whole-model totals, the verdict and the JSON of a speedcheck.

Whole model, per batch size: the sum over shapes of count x time, for the dense layers and for
each sparse path.  A sparse path is compared with the dense op it replaces: the layer's own op
for a Linear, the dense GEMM of the same shape for a convolution (whose sparse paths run as
GEMMs).  A layer a path cannot run (kept dense, not 2:4-eligible, a shape the kernels refuse)
counts at that dense time, and the table says how many layers that was.  The dense forward of
the whole model is measured too, so the layers' share of it is known and the speed-up of the
forward can be estimated by Amdahl's law; that figure is an estimate and labelled so.

The verdict is decided on the measured layer speed-up: "pays off" above 1.05x, "costs" below
0.95x, "no measurable difference" in between (timing noise on a shared machine is a few %).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from dstrain.speedcheck.paths import OK, PATHS, TWO_FOUR, UNSTRUCTURED
from dstrain.speedcheck.runner import BUDGET_REASON, Measurement, ShapeResult

PAYS_OFF, COSTS, NO_DIFFERENCE = "pays off", "costs", "no measurable difference"
PAYS_OFF_ABOVE, COSTS_BELOW = 1.05, 0.95
SCHEMA = "dstrain.speedcheck/1"
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def classify(speedup: float) -> str:
    if speedup > PAYS_OFF_ABOVE:
        return PAYS_OFF
    if speedup < COSTS_BELOW:
        return COSTS
    return NO_DIFFERENCE


def path_label(path: str, sparsity: float) -> str:
    return "2:4" if path == TWO_FOUR else f"Unstructured {100 * sparsity:g}%"


def reference_ms(kind: str, result: ShapeResult) -> Optional[float]:
    """The dense time a sparse path of this shape is compared with (the GEMM for a convolution)."""
    return result.gemm_ms if kind == "conv2d" else result.dense_ms


@dataclass
class PathTotal:
    layers_ms: Optional[float]
    """Sum of count x time with this path wherever it ran, dense elsewhere; None: not every shape measured."""
    reference_ms: Optional[float]
    speedup: Optional[float]
    dense_layers: int
    """Layers counted at their dense time because this path did not run on them."""
    forward_estimate: Optional[float]


@dataclass
class BatchTotal:
    batch: int
    complete: bool
    forward_ms: Optional[float]
    layers_dense_ms: Optional[float]
    layers_share: Optional[float]
    paths: Dict[str, Optional[PathTotal]]
    """None for a path that cannot run on this device at all."""


def amdahl(share: float, speedup: float) -> float:
    """Whole-forward speed-up when a ``share`` of it (clamped to [0, 1]) gets ``speedup``."""
    share = min(max(share, 0.0), 1.0)
    return 1.0 / ((1.0 - share) + share / speedup)


def batch_totals(m: Measurement) -> List[BatchTotal]:
    shapes = m.shapes.shapes
    out = []
    for batch in m.batches:
        rows = [r for r in m.results if r.batch == batch]
        complete = bool(rows) and all(r.measured for r in rows)
        forward = m.forward_ms.get(batch)
        dense = sum(shapes[r.shape].count * r.dense_ms for r in rows) if complete else None
        share = dense / forward if dense is not None and forward else None
        paths: Dict[str, Optional[PathTotal]] = {}
        for path in PATHS:
            if m.path_reasons.get(path):
                paths[path] = None
                continue
            total, reference, fallback = 0.0, 0.0, 0
            done = complete
            for r in rows if complete else ():
                count, ref = shapes[r.shape].count, reference_ms(shapes[r.shape].kind, r)
                result = r.paths[path]
                if result.status == "not measured":
                    done = False
                    break
                reference += count * ref
                if result.status == OK:
                    total += count * result.ms
                else:
                    total += count * ref
                    fallback += count
            if not done:
                paths[path] = PathTotal(None, None, None, fallback, None)
                continue
            speedup = reference / total if total > 0 else None
            estimate = amdahl(share, speedup) if share is not None and speedup else None
            paths[path] = PathTotal(total, reference, speedup, fallback, estimate)
        out.append(BatchTotal(batch, complete, forward, dense, share, paths))
    return out


def _fmt_batches(batches: Sequence[int]) -> str:
    items = [str(b) for b in batches]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _range(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}x-{hi:.2f}x"


def verdict_line(label: str, measured: Sequence[Tuple[int, float, Optional[float]]], reason: Optional[str] = None,
                 unmeasured: Sequence[int] = ()) -> str:
    """One sentence per path: where it pays off, costs or makes no difference, with the numbers.

    ``measured``: (batch, layer speed-up, forward estimate or None) per batch size with complete totals;
    ``reason``: why the path cannot run here at all; ``unmeasured``: batch sizes the budget did not reach.
    """
    if reason:
        return f"{label}: {reason}."
    if not measured:
        return f"{label}: not measured ({BUDGET_REASON} ran out before any batch size was complete)."
    measured = sorted(measured)
    all_batches = [b for b, _, _ in measured]
    clauses = []
    for cls in (PAYS_OFF, NO_DIFFERENCE, COSTS):
        group = [(b, s, f) for b, s, f in measured if classify(s) == cls]
        if not group:
            continue
        batches = [b for b, _, _ in group]
        if len(group) == len(measured):
            where = "at every batch" if len(group) > 1 else f"at batch {batches[0]}"
        elif len(group) > 1 and batches == all_batches[-len(group):]:
            where = f"at batch >= {batches[0]}"
        elif len(group) > 1 and batches == all_batches[:len(group)]:
            where = f"at batch <= {batches[-1]}"
        else:
            where = f"at batch {_fmt_batches(batches)}"
        numbers = f"layers {_range([s for _, s, _ in group])}"
        estimates = [f for _, _, f in group if f is not None]
        if len(estimates) == len(group):
            numbers += f", forward est. {_range(estimates)}"
        clauses.append(f"{cls} {where} ({numbers})")
    text = f"{label}: " + "; ".join(clauses)
    if unmeasured:
        text += f"; not measured at batch {_fmt_batches(list(unmeasured))} ({BUDGET_REASON})"
    return text + "."


def verdicts(m: Measurement, totals: List[BatchTotal]) -> Dict[str, str]:
    out = {}
    for path in PATHS:
        measured, unmeasured = [], []
        for t in totals:
            pt = t.paths.get(path)
            if pt is not None and pt.speedup is not None:
                measured.append((t.batch, pt.speedup, pt.forward_estimate))
            else:
                unmeasured.append(t.batch)
        label = path_label(path, m.sparsity) + (" (this model's pattern)" if path == own_path(m) else "")
        out[path] = verdict_line(label, measured, m.path_reasons.get(path), unmeasured)
    return out


def own_path(m: Measurement) -> Optional[str]:
    """The sparse path the model's own recipe/export uses (2:4 for any N:M pattern), if it has one."""
    if m.spec.sparsity is None:
        return None
    return UNSTRUCTURED if m.spec.pattern == "unstructured" else TWO_FOUR


# --- Markdown ---------------------------------------------------------------------------------------
def _ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _x(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cell(result: Any, reference: Optional[float], notes: List[str]) -> Tuple[str, str]:
    """(ms cell, speed-up cell) of one sparse path; a status with a reason gets a numbered note."""
    if result.status == OK:
        return _ms(result.ms), _x(reference / result.ms if reference and result.ms else None)
    if result.status == "not measured":
        return f"not measured: {result.reason}", ""
    if result.status == "kept dense":
        return "kept dense", ""
    if result.reason not in notes:
        notes.append(result.reason)
    return f"{result.status} [{notes.index(result.reason) + 1}]", ""


def markdown(m: Measurement, command: str = "") -> str:
    shapes = m.shapes.shapes
    totals = batch_totals(m)
    verdict = verdicts(m, totals)
    dtype = DTYPE_NAMES.get(m.dtype, str(m.dtype))
    layers = sum(s.count for s in shapes)
    labels = {p: path_label(p, m.sparsity) for p in PATHS}
    short = {TWO_FOUR: "2:4", UNSTRUCTURED: f"unstr. {100 * m.sparsity:g}%"}
    has_conv = any(s.kind == "conv2d" for s in shapes)
    lines = [f"# dstrain speedcheck: {m.spec.name}", ""]
    if command:
        lines += [f"`{command}`", ""]
    budget = "no budget" if m.budget_s is None else f"budget {m.budget_s:g} s"
    lines += [f"Device: {m.device_name} ({m.device.type}), {dtype}, torch {torch.__version__}; "
              f"input {m.spec.input_desc}; "
              f"{len(shapes)} distinct Linear/Conv2d shapes ({layers} layers; shapes from a {m.shapes.method}); "
              f"median of {m.repeats} repeats after {m.warmup} warm-up calls, {budget}.", ""]
    own = own_path(m)
    for note in m.spec.notes:
        lines.append(f"* {note}")
    if own:
        lines.append(f"* this model's pattern: {m.spec.pattern}, sparsity {100 * m.spec.sparsity:.3g}% "
                     f"(the {labels[own]} verdict and columns are the ones that apply)")
    if m.shapes.unseen:
        lines.append(f"* {len(m.shapes.unseen)} Linear/Conv2d module(s) never ran their forward (e.g. "
                     f"{m.shapes.unseen[0]}; nn.MultiheadAttention calls its weights directly): not measured")
    lines.append("* 2:4 = `F.linear(x, to_sparse_semi_structured(w))`, w masked to exact 2:4 by magnitude; "
                 f"unstructured = `torch.sparse.mm(w_csr, x.t())`, w masked to {100 * m.sparsity:g}% zeros by "
                 "magnitude; each sparse result is checked against the dense product first; biases are left out "
                 "of every path")
    if has_conv:
        lines.append("* conv rows: the sparse paths run the conv's implicit GEMM (rows = batch x output pixels, "
                     "K = Cin x kh x kw, N = Cout; im2col not timed) and their speed-up is against the dense GEMM of "
                     "that shape (\"dense GEMM ms\"); \"dense ms\" is the real `F.conv2d`")
    if not all(s.prunable for s in shapes):
        lines.append("* \"kept dense\": layers the recipe/export does not prune (by default the first conv and the "
                     "classifier); they count at their dense time in every total")
    for path in PATHS:
        if m.path_reasons.get(path):
            lines.append(f"* {labels[path]}: {m.path_reasons[path]}")
    lines += ["", "## Verdict", ""]
    order = [own] + [p for p in PATHS if p != own] if own else list(PATHS)
    lines += [verdict[p] for p in order]
    lines += ["", f"({PAYS_OFF}: > {PAYS_OFF_ABOVE}x, {COSTS}: < {COSTS_BELOW}x, decided on the measured Linear/Conv2d "
              "layer time; \"forward est.\" is an Amdahl estimate from the measured dense forward, not a measurement.)",
              "", "## Whole model", ""]
    head = ["batch", "dense forward ms", "dense layers ms", "layers share of forward"]
    for p in PATHS:
        if not m.path_reasons.get(p):
            head += [f"{short[p]} layers ms (vs dense)", f"{short[p]} layers x", f"{short[p]} forward est.",
                     f"{short[p]} layers left dense"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for t in totals:
        forward = _ms(t.forward_ms) if t.forward_ms is not None else f"not measured: {m.forward_note.get(t.batch, '?')}"
        share = "-" if t.layers_share is None else f"{100 * t.layers_share:.0f}%"
        share += " (!)" if t.layers_share is not None and t.layers_share > 1 else ""
        row = [str(t.batch), forward, _ms(t.layers_dense_ms) if t.complete else "incomplete: budget", share]
        for p in PATHS:
            if m.path_reasons.get(p):
                continue
            pt = t.paths[p]
            if pt is None or pt.layers_ms is None:
                row += ["not measured: budget", "", "", ""]
            else:
                row += [f"{_ms(pt.layers_ms)} (vs {_ms(pt.reference_ms)})", _x(pt.speedup),
                        _x(pt.forward_estimate) + (" (est.)" if pt.forward_estimate else ""), str(pt.dense_layers)]
        lines.append("| " + " | ".join(row) + " |")
    if any(t.layers_share is not None and t.layers_share > 1 for t in totals):
        lines += ["", "(!) The layers, timed one by one, add up to more than the whole forward: the two disagree (a "
                  "busy machine, or per-call overhead the forward does not pay), so that batch's numbers are doubtful; "
                  "its forward estimate takes the share as 100%."]
    for batch in m.batches:
        lines += ["", f"## Batch {batch}", ""]
        head = ["shape", "count", "GEMM rows x K x N", "dense ms"] + (["dense GEMM ms"] if has_conv else [])
        for p in PATHS:
            if not m.path_reasons.get(p):
                head += [f"{short[p]} ms", f"{short[p]} x"]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        notes: List[str] = []
        for r in (r for r in m.results if r.batch == batch):
            s = shapes[r.shape]
            gemm = f"{s.rows(batch)}x{s.gemm_k}x{s.gemm_n}"
            if not r.measured:
                status = r.paths[PATHS[0]]
                cell = (f"not measured: {status.reason}" if status.status == "not measured"
                        else f"{status.status}: {status.reason}")
                row = [s.label, str(s.count), gemm, cell] + ([""] if has_conv else [])
                row += ["", ""] * sum(not m.path_reasons.get(p) for p in PATHS)
            else:
                row = [s.label, str(s.count), gemm, _ms(r.dense_ms)]
                if has_conv:
                    row.append(_ms(r.gemm_ms) if s.kind == "conv2d" else "(same)")
                for p in PATHS:
                    if not m.path_reasons.get(p):
                        row += list(_cell(r.paths[p], reference_ms(s.kind, r), notes))
            lines.append("| " + " | ".join(row) + " |")
        lines += [""] + [f"[{i}] {reason}" for i, reason in enumerate(notes, 1)] if notes else []
    return "\n".join(lines).rstrip() + "\n"


# --- JSON -------------------------------------------------------------------------------------------
def to_json(m: Measurement, command: str = "") -> Dict[str, Any]:
    """Everything the tables show, for scripts (``schema`` names the layout)."""
    shapes = m.shapes.shapes
    totals = batch_totals(m)
    verdict = verdicts(m, totals)
    return {
        "schema": SCHEMA,
        "command": command,
        "model": {"name": m.spec.name, "source": m.spec.source, "input": m.spec.input_desc, "notes": m.spec.notes,
                  "pattern": m.spec.pattern, "sparsity": m.spec.sparsity},
        "device": {"type": m.device.type, "name": m.device_name}, "dtype": DTYPE_NAMES.get(m.dtype, str(m.dtype)),
        "torch": torch.__version__, "batches": m.batches, "sparsity": m.sparsity,
        "budget_s": m.budget_s, "warmup": m.warmup, "repeats": m.repeats,
        "shape_method": m.shapes.method, "unseen_layers": m.shapes.unseen,
        "path_unavailable": m.path_reasons,
        "shapes": [s.to_json() for s in shapes],
        "results": [{"shape": r.shape, "batch": r.batch, "rows": shapes[r.shape].rows(r.batch), "measured": r.measured,
                     "dense_ms": r.dense_ms, "dense_gemm_ms": r.gemm_ms,
                     "reference_ms": reference_ms(shapes[r.shape].kind, r),
                     "paths": {p: r.paths[p].to_json() for p in PATHS if p in r.paths}} for r in m.results],
        "totals": [{"batch": t.batch, "complete": t.complete, "forward_ms": t.forward_ms,
                    "forward_note": m.forward_note.get(t.batch), "layers_dense_ms": t.layers_dense_ms,
                    "layers_share": t.layers_share,
                    "paths": {p: (None if pt is None else {"layers_ms": pt.layers_ms, "reference_ms": pt.reference_ms,
                                                           "speedup": pt.speedup, "layers_left_dense": pt.dense_layers,
                                                           "forward_estimate": pt.forward_estimate})
                              for p, pt in t.paths.items()}} for t in totals],
        "verdict": verdict,
        "thresholds": {"pays_off_above": PAYS_OFF_ABOVE, "costs_below": COSTS_BELOW},
    }
