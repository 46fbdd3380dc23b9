#!/usr/bin/env python
"""The under-training grid on Fashion-MNIST: recipes/fashion/ at several seeds, and the dense length
curve that chooses its base length.

    apt-get install dataset-fashion-mnist                  # the data: /usr/share/datasets/fashion-mnist/
    python benchmarks/replicate_fashion.py --length_curve  # dense at 3..24 epochs -> docs/fashion/length.{md,png}
    python benchmarks/replicate_fashion.py                 # whole grid -> runs/fashion/, report -> docs/fashion/
    python benchmarks/replicate_fashion.py --jobs 1        # one run at a time
    python benchmarks/replicate_fashion.py --only gmp98    # a subset (substring of the file name)

Trains every recipe in --recipes at seeds 0..N-1 (``--seeds N``, default 3; ``--claim`` narrows the
extra seeds to some recipes), writing OUT/<recipe name>_s<seed>/.  ``--jobs`` runs (default 2, one
per core) train side by side, one torch thread each.  Resumable: a run with a result.json is
skipped; an interrupted run starts over (``--force`` re-runs everything).  Order: the whole grid
at seed 0, then per extra seed dense, 98%, 95%, 90% with each recipe's lengths together (see ``plan``).
Then writes the report (report.md + report.png, dstrain/report: per run, and mean ± standard
error across seeds), summary.md (per cell, and whether each doubling of the length closes the
train-loss gap beyond noise), curves.png (training loss of dense, 95% and 98% at 1x and 2x) and
timing.md to --report_dir; OUT/times.jsonl gets one line per trained run (seconds, load average
before and after).  ``--length_curve`` trains recipes/fashion_length/ instead and writes
length.md + length.png: the dense curve and the base length its rule picks (``choose_base``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLAIM = ("dense_", "gmp", "acdc")  # every recipe of the grid gets every seed
LENGTH_RECIPES = REPO / "recipes" / "fashion_length"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=None,
                   help="folder of YAML recipes (default recipes/fashion, with --length_curve recipes/fashion_length)")
    p.add_argument("--out", default=None,
                   help="run folders go to OUT/<recipe name>_s<seed> (default runs/fashion, runs/fashion_length)")
    p.add_argument("--report_dir", default=str(REPO / "docs" / "fashion"), help="where the report files go")
    p.add_argument("--length_curve", action="store_true",
                   help="the dense length curve: recipes/fashion_length/, report length.md + length.png")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for the claim-carrying recipes (default 3)")
    p.add_argument("--claim", action="append", default=None, metavar="TEXT",
                   help=f"recipe file names containing TEXT get all seeds (repeatable; default {list(CLAIM)})")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only recipes whose file name contains TEXT (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for every run, e.g. task.data_dir=/my/idx (YAML value)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained side by side (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (default 1)")
    p.add_argument("--force", action="store_true", help="re-run runs that already have a result.json")
    p.add_argument("--no_report", action="store_true", help="train only")
    p.add_argument("--report_only", action="store_true",
                   help="train nothing: report the finished runs of the grid (e.g. after stopping it)")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1 or args.threads < 1:
        p.error("--seeds, --jobs and --threads must be at least 1")
    args.recipes = args.recipes or str(LENGTH_RECIPES if args.length_curve else REPO / "recipes" / "fashion")
    args.out = args.out or ("runs/fashion_length" if args.length_curve else "runs/fashion")
    return args


def _overrides(pairs: List[str]) -> Dict[str, Any]:
    import yaml

    from dstrain import ConfigError

    out: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"{pair!r} is not KEY=VALUE", "e.g. --set task.data_dir=/path/to/idx")
        out[key] = yaml.safe_load(value)
    return out


def plan(paths: List[Path], seeds: int, claim: Tuple[str, ...]) -> List[Tuple[Path, int]]:
    """(recipe file, seed) in run order.

    The whole grid at seed 0 first, longest runs first (so the two workers finish together); then
    each extra seed with the 1x and 3x run of a recipe next to each other, dense first, then the
    highest sparsity: an interrupted grid leaves whole 1x/3x pairs with a dense reference.
    """
    import yaml

    def epochs(path: Path) -> float:
        return float(yaml.safe_load(path.read_text())["training"]["epochs"])

    def sparsity(path: Path) -> float:
        schedule = (yaml.safe_load(path.read_text()).get("pruning") or {}).get("schedule") or {}
        return float(schedule.get("final_sparsity", schedule.get("sparsity", 0.0)) or 0.0)

    is_claim = {p: any(text in p.name for text in claim) for p in paths}
    jobs = [(p, s) for s in range(seeds) for p in paths if is_claim[p] or s == 0]

    def key(job: Tuple[Path, int]):
        p, s = job
        if s == 0:
            return (0, -epochs(p), p.name)
        family = p.name.rsplit("_", 1)[0]  # gmp98_1x.yaml -> gmp98
        return (s, sparsity(p) > 0, -sparsity(p), family, epochs(p))

    return sorted(jobs, key=key)


DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def train_one(path: str, seed: int, overrides: Dict[str, Any], run_dir: str, threads: int,
              own_world: bool = False) -> Dict[str, Any]:
    """One run (in a worker process); returns its result plus timing and load.

    ``own_world``: a spawned worker drops the torch.distributed variables it inherited, so
    each run is a world of one on a free port of its own (two workers inheriting a parent's
    MASTER_PORT, e.g. under pytest, collided on it: EADDRINUSE).
    """
    if own_world:
        for key in DIST_ENV:
            os.environ.pop(key, None)
    # Before the trainer's set_rank_threads, which gives an unset OMP_NUM_THREADS all cores per
    # process: with --jobs 2 that was 4 threads on 2 cores, and the grid ran several times slower.
    # Restored afterwards: with --jobs 1 this is the caller's process.
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        return _train_one(path, seed, overrides, run_dir, threads)
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def _train_one(path: str, seed: int, overrides: Dict[str, Any], run_dir: str, threads: int) -> Dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.set_num_threads(threads)
    from dstrain import ConfigError, SparseTrainer, TrainerOptions, load_recipe

    load_before, t0 = os.getloadavg()[0], time.time()
    try:
        recipe = load_recipe(path, {**overrides, "training.seed": seed})
        # overwrite: a run trained again here (--force, or after an interruption) replaces the old one
        options = TrainerOptions(output_dir=Path(run_dir), progress=False, tensorboard=False, overwrite=True)
        result = SparseTrainer(recipe, options).train()
    except ConfigError as err:  # the message crosses the process boundary as text, shown as one line
        return {"run": Path(run_dir).name, "error": str(err)}
    return {"run": Path(run_dir).name, "seconds": round(time.time() - t0, 1), "load_before": load_before,
            "load_after": os.getloadavg()[0], "score": result["score"], "sparsity": result["sparsity"],
            "steps": result["steps"], "torch_threads": torch.get_num_threads()}


def _train_all(todo: List[Tuple[Path, int, Path]], overrides: Dict[str, Any], jobs: int,
               threads: int) -> Iterator[Dict[str, Any]]:
    """Result rows as runs finish: in this process with --jobs 1, else in fresh worker processes."""
    if jobs == 1:
        for p, s, d in todo:
            yield train_one(str(p), s, overrides, str(d), threads)
        return
    context = get_context("spawn")  # a fresh interpreter per run: no state shared between runs
    with ProcessPoolExecutor(jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(train_one, str(p), s, overrides, str(d), threads, True) for p, s, d in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:  # an error row or Ctrl-C: start nothing new
            for future in futures:
                future.cancel()


def _finished(run_dir: Path) -> bool:
    try:
        return not json.loads((run_dir / "result.json").read_text()).get("stopped_early", False)
    except (OSError, json.JSONDecodeError):
        return False


def timing_markdown(times: Path, run_dirs: List[Path]) -> str:
    """Per-run wall time (from times.jsonl, the last line per run) and the machine's load."""
    rows: Dict[str, Dict[str, Any]] = {}
    if times.is_file():
        for line in times.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["run"]] = row
    lines = ["# Run times", "",
             f"Each run on one torch thread, up to --jobs runs side by side; load = 1-minute load average of "
             f"the machine when the run started and ended ({os.cpu_count()} CPUs seen).", "",
             "| Run | Steps | Wall time (s) | Load at start | Load at end |", "|---|---:|---:|---:|---:|"]
    for d in run_dirs:
        row = rows.get(d.name)
        if row is not None:
            lines.append(f"| {d.name} | {row['steps']} | {row['seconds']:.0f} | {row['load_before']:.1f} "
                         f"| {row['load_after']:.1f} |")
    total = sum(rows[d.name]["seconds"] for d in run_dirs if d.name in rows)
    lines += ["", f"{sum(d.name in rows for d in run_dirs)} of {len(run_dirs)} runs timed; "
                  f"sum of their wall times {total:.0f} s."]
    missing = [d.name for d in run_dirs if not _finished(d)]
    if missing:
        lines += ["", f"Not finished (not in the report): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


# --- the dense length curve ----------------------------------------------------------------------
def length_points(run_dirs: List[Path]) -> List[Dict[str, Any]]:
    """Per length (one recipe each): seeds, final test accuracy and final train loss, mean ± standard error."""
    from dstrain.report import load_runs, mean_se, seed_groups

    points = []
    for name, group in seed_groups(load_runs(run_dirs)).items():
        points.append({"recipe": name, "epochs": group[0].epochs, "steps": (group[0].result or {}).get("steps"),
                       "seeds": sorted(r.seed for r in group),
                       "accuracy": mean_se([r.final("val_accuracy") for r in group]),
                       "train_loss": mean_se([r.final("train_loss") for r in group]), "runs": group})
    return sorted(points, key=lambda p: p["epochs"])


def doublings(points: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each length next to the length twice as long: the accuracy change, its standard error (the two
    lengths' errors in quadrature) and whether the longer run is better by more than 2 of them.

    "Within noise" is one-sided on purpose: a doubling that loses accuracy beyond noise (over-fitting)
    also says the shorter length was long enough."""
    from dstrain.report import NOISE_SE, diff_stat

    by_epochs = {p["epochs"]: p for p in points}
    out = []
    for p in points:
        q = by_epochs.get(2 * p["epochs"])
        if q is None:
            continue
        change = diff_stat(q["accuracy"], p["accuracy"])
        enough = None if change is None or change.se is None else change.mean <= NOISE_SE * change.se
        out.append({"short": p, "long": q, "change": change, "enough": enough})
    return out


def choose_base(points: List[Dict[str, Any]]) -> Optional[float]:
    """The grid's 1x: the shortest length whose next doubling gains no more than 2 standard errors of
    test accuracy (None when no measured doubling qualifies: the curve must go longer)."""
    for d in doublings(points):
        if d["enough"]:
            return d["short"]["epochs"]
    return None


def length_markdown(points: List[Dict[str, Any]]) -> str:
    from dstrain.report import NOISE_SE

    base = choose_base(points)
    lines = ["# Dense length curve", "",
             "The Fashion-MNIST recipe of recipes/fashion/ trained dense at each length (recipes/fashion_length/: "
             "each a full schedule, warm-up 5% of its length and cosine to 0 at its end); final test accuracy "
             "on the 10,000 test images and final-epoch training loss, mean ± standard error over seeds.", "",
             "| Epochs | Steps | Seeds | Test accuracy (%) | Final train loss |", "|---:|---:|---|---:|---:|"]
    for p in points:
        a, t = p["accuracy"], p["train_loss"]
        se = f" ± {a.se * 100:.2f}" if a.se is not None else ""
        tse = f" ± {t.se:.4f}" if t.se is not None else ""
        lines.append(f"| {p['epochs']:g} | {p['steps'] or '–'} | {','.join(map(str, p['seeds']))} "
                     f"| {a.mean * 100:.2f}{se} | {t.mean:.4f}{tse} |")
    lines += ["", f"Rule: 1x is the shortest length whose next doubling raises test accuracy by no more than "
                  f"{NOISE_SE:g} standard errors of the change (the two lengths' standard errors in quadrature).", "",
              "| Doubling | Accuracy change (pts) | 2 standard errors (pts) | Longer run better beyond noise |",
              "|---|---:|---:|---|"]
    for d in doublings(points):
        c = d["change"]
        two_se = "–" if c.se is None else f"{NOISE_SE * c.se * 100:.2f}"
        verdict = "–" if d["enough"] is None else ("no: the shorter length is enough" if d["enough"] else "yes")
        lines.append(f"| {d['short']['epochs']:g} → {d['long']['epochs']:g} | {c.mean * 100:+.2f} | {two_se} "
                     f"| {verdict} |")
    lines += ["", f"Chosen 1x: **{base:g} epochs**." if base is not None else
              "No measured length qualifies: the curve has to go longer before the grid can pick its 1x."]
    return "\n".join(lines) + "\n"


def length_plot(points: List[Dict[str, Any]], path: Path) -> None:
    """Test accuracy and final train loss against length (log 2 axis), every seed as a dot, 1x marked."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [p["epochs"] for p in points]
    for ax, key, scale, label in ((axes[0], "accuracy", 100.0, "final test accuracy (%)"),
                                  (axes[1], "train_loss", 1.0, "final-epoch train loss")):
        means = [p[key].mean * scale for p in points]
        errs = [(p[key].se or 0.0) * scale for p in points]
        ax.errorbar(epochs, means, yerr=errs, marker="o", capsize=4, label="mean ± standard error")
        for p in points:
            values = [(r.final("val_accuracy") if key == "accuracy" else r.final("train_loss")) * scale
                      for r in p["runs"]]
            ax.plot([p["epochs"]] * len(values), values, ".", color="grey", alpha=0.7)
        base = choose_base(points)
        if base is not None:
            ax.axvline(base, color="tab:red", linestyle="--", label=f"chosen 1x = {base:g} epochs")
        ax.set_xscale("log", base=2)
        ax.set_xticks(epochs, [f"{e:g}" for e in epochs])
        ax.set_xlabel("epochs (each a full cosine schedule)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Dense SmallResNet-8 on Fashion-MNIST: length curve")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the grid's summary ----------------------------------------------------------------------------
def _pm(stat: Any, scale: float = 1.0, fmt: str = "{:.4f}", signed: bool = False) -> str:
    if stat is None:
        return "–"
    text = ("{:+" + fmt[2:]).format(stat.mean * scale) if signed else fmt.format(stat.mean * scale)
    return text if stat.se is None else f"{text} ± {fmt.format(stat.se * scale)}"


def _verdict(change: Any) -> str:
    """What a change of the train-loss gap says, against 2 standard errors."""
    if change is None or change.se is None:
        return "–"
    if not change.exceeds_noise:
        return "no change beyond noise"
    return "closes" if change.mean < 0 else "widens"


def _pts(stat: Any, signed: bool = True) -> str:
    """An accuracy statistic (a fraction) in percentage points."""
    return _pm(stat, 100, "{:.2f}", signed)


def _cell_line(r: Dict[str, Any], base: float) -> str:
    dense = r["is_dense"]
    return (f"| {r['method']} | {r['epochs'] / base:g}x | {r['epochs']:g} | {','.join(map(str, r['seeds']))} "
            f"| {_pts(r['score'], signed=False)} | {'0 (ref)' if dense else _pts(r['d_score'])} "
            f"| {_pm(r['train_loss'])} | {'0 (ref)' if dense else _pm(r['gap'], signed=True)} |")


def _doubling_line(method: str, short: Dict[str, Any], long: Dict[str, Any]) -> str:
    from dstrain.report import diff_stat

    gap_change = diff_stat(long["gap"], short["gap"])
    closed = "–"
    if short["gap"] is not None and long["gap"] is not None and short["gap"].mean > 0:
        closed = f"{(1 - long['gap'].mean / short['gap'].mean) * 100:.0f}%"
    return (f"| {method} | {short['epochs']:g} → {long['epochs']:g} "
            f"| {_pts(short['d_score'])} → {_pts(long['d_score'])} "
            f"| {_pts(diff_stat(long['d_score'], short['d_score']))} "
            f"| {_pm(short['gap'], signed=True)} → {_pm(long['gap'], signed=True)} "
            f"| {_pm(gap_change, signed=True)} | {closed} | {_verdict(gap_change)} |")


def summary_markdown(run_dirs: List[Path]) -> str:
    """Per cell (method, sparsity, length): accuracy, loss to dense, train loss and gap; then per
    doubling of the length, whether the gap closes beyond noise."""
    from dstrain.report import load_runs, seed_rows

    rows = seed_rows(load_runs(run_dirs))
    base = min(r["epochs"] for r in rows)
    lines = ["# Fashion-MNIST grid: summary per cell", "",
             f"1x = {base:g} epochs. Test accuracy on the 10,000 test images and final-epoch train loss at the "
             "end of training; Δ and gap against the dense run of the same length and seed, then averaged; "
             "mean ± standard error over seeds.", "",
             "| Method | Length | Epochs | Seeds | Test accuracy (%) | Δ vs dense (pts) | Final train loss "
             "| Train-loss gap to dense |", "|---|---|---:|---|---:|---:|---:|---:|"]
    lines += [_cell_line(r, base) for r in sorted(rows, key=lambda r: (not r["is_dense"], r["method"], r["epochs"]))]
    lines += ["", "## Doubling the length", "",
              "Change = longer minus shorter, standard errors in quadrature; a change counts when it is more than "
              "2 standard errors from 0. Gap closed = 1 − gap(longer) / gap(shorter).", "",
              "| Method | Epochs | Δ vs dense (pts), shorter → longer | Δ change (pts) "
              "| Train-loss gap, shorter → longer | Gap change | Gap closed | The longer schedule |",
              "|---|---|---|---:|---|---:|---:|---|"]
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if not r["is_dense"]:
            by_method.setdefault(r["method"], []).append(r)
    for method in sorted(by_method):
        cells = sorted(by_method[method], key=lambda r: r["epochs"])
        lines += [_doubling_line(method, short, long) for short, long in zip(cells, cells[1:])]
    return "\n".join(lines) + "\n"


def curves_plot(run_dirs: List[Path], path: Path) -> None:
    """Training loss per epoch (mean over seeds) of dense, 95% and 98% at 1x and 2x, one panel per length."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from dstrain.report import load_runs, mean_curves

    runs = [r for r in mean_curves(load_runs(run_dirs)) if r.is_dense or r.target_sparsity in (0.95, 0.98)]
    base = min(r.epochs for r in runs)
    methods = sorted({r.method for r in runs}, key=lambda m: (m != "dense", m))
    colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, mult in zip(axes, (1, 2)):
        for run in sorted((r for r in runs if r.epochs == mult * base), key=lambda r: methods.index(r.method)):
            epochs = [row["epoch"] for row in run.rows]
            ax.plot(epochs, run.series("train_loss"), "-" if run.kind != "acdc" else "--",
                    color=colors[run.method], label=run.method, linewidth=2 if run.is_dense else 1.3)
        ax.set_title(f"{mult}x = {mult * base:g} epochs")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("training loss (epoch mean, mean over seeds)")
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda hl: len(hl[0]))
    axes[-1].legend(handles, labels, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from dstrain import ConfigError, load_recipe

    paths = sorted(Path(args.recipes).glob("*.yaml"))
    if args.only:
        paths = [p for p in paths if any(text in p.name for text in args.only)]
    if not paths:
        print(f"error: --recipes: no recipes matched in {args.recipes}", file=sys.stderr)
        return 2
    out, start = Path(args.out), time.time()
    try:
        overrides = _overrides(args.set)
        names = {p: load_recipe(p, overrides).name for p in paths}  # validate all before training any
        jobs = plan(paths, args.seeds, tuple(args.claim or CLAIM))
        run_dirs = [out / f"{names[p]}_s{seed}" for p, seed in jobs]
        todo = [(p, s, d) for (p, s), d in zip(jobs, run_dirs) if args.force or not _finished(d)]
        if args.report_only:
            todo = []
        for d in set(run_dirs) - {d for _, _, d in todo}:
            print(f"reusing {d}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(_train_all(todo, overrides, args.jobs, args.threads), 1):
            if "error" in row:
                print(f"error: {row['error']}", file=sys.stderr)
                return 2
            with open(out / "times.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[{i}/{len(todo)}] {row['run']}: score={row['score']:.4f} sparsity={row['sparsity']:.4f} "
                  f"{row['seconds']:.0f}s (load {row['load_before']:.1f} -> {row['load_after']:.1f})", flush=True)
        if args.no_report:
            return 0
        epochs = {p: load_recipe(p, overrides).training.epochs for p in paths}
        shown = sorted(zip(jobs, run_dirs), key=lambda j: (epochs[j[0][0]], "dense" not in j[0][0].name,
                                                         j[0][0].name, j[0][1]))  # shortest first, dense first
        finished = [d for _, d in shown if _finished(d)]
        if not finished:
            raise ConfigError("--out", f"{out} holds no finished run of this grid", "train first (drop --report_only)")
        written = _write_reports(finished, Path(args.report_dir), args.length_curve)
        timing = "length_timing.md" if args.length_curve else "timing.md"
        (Path(args.report_dir) / timing).write_text(timing_markdown(out / "times.jsonl", [d for _, d in shown]))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(written[0].read_text())
    print(f"wrote {', '.join(map(str, written))} ({time.time() - start:.0f}s in all)")
    return 0


def _write_reports(finished: List[Path], report_dir: Path, length_curve: bool) -> List[Path]:
    """The length curve's table and plot, or the grid's report, per-cell summary and loss curves."""
    from dstrain.report import write_report

    report_dir.mkdir(parents=True, exist_ok=True)
    if length_curve:
        points = length_points(finished)
        (report_dir / "length.md").write_text(length_markdown(points))
        length_plot(points, report_dir / "length.png")
        return [report_dir / "length.md", report_dir / "length.png"]
    written = write_report(finished, report_dir)
    (report_dir / "summary.md").write_text(summary_markdown(finished))
    curves_plot(finished, report_dir / "curves.png")
    return [report_dir / "summary.md", written["md"], written["png"], report_dir / "curves.png"]


if __name__ == "__main__":
    sys.exit(main())
