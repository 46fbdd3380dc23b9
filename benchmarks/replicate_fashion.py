#!/usr/bin/env python
"""The under-training grid on Fashion-MNIST: recipes/fashion/ with several seeds.

    apt-get install dataset-fashion-mnist                  # the data: /usr/share/datasets/fashion-mnist/
    python benchmarks/replicate_fashion.py                 # whole grid -> runs/fashion/, report -> docs/fashion/
    python benchmarks/replicate_fashion.py --jobs 1        # one run at a time
    python benchmarks/replicate_fashion.py --only gmp98    # a subset (substring of the file name)

Trains every recipe in recipes/fashion/ at seed 0, and the claim-carrying recipes (dense and
GMP/AC-DC at 95% and 98%, at 1x and 3x; ``--claim``) also at seeds 1..N-1 (``--seeds N``,
default 3), writing OUT/<recipe name>_s<seed>/.  ``--jobs`` runs (default 2, one per core) train
side by side, one torch thread each.  Resumable: a run with a result.json is skipped; an
interrupted run starts over (``--force`` re-runs everything).  Order: the whole grid at seed 0,
then per extra seed dense, 98%, 95% with each 1x/3x pair together (see ``plan``).
Then writes the report (report.md + report.png, dstrain/report.py: per run, and mean ±
standard error across seeds) and timing.md to --report_dir; OUT/times.jsonl gets one line per
trained run (seconds, load average before and after).
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

CLAIM = ("dense_", "gmp95_", "gmp98_", "acdc95_", "acdc98_")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=str(REPO / "recipes" / "fashion"), help="folder of YAML recipes")
    p.add_argument("--out", default="runs/fashion", help="run folders go to OUT/<recipe name>_s<seed>")
    p.add_argument("--report_dir", default=str(REPO / "docs" / "fashion"), help="where report.md/.png go")
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


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from dstrain import ConfigError, load_recipe
    from dstrain.report import write_report

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
                                                         j[0][0].name, j[0][1]))  # 1x then 3x, dense first
        finished = [d for _, d in shown if _finished(d)]
        if not finished:
            raise ConfigError("--out", f"{out} holds no finished run of this grid", "train first (drop --report_only)")
        written = write_report(finished, args.report_dir)
        (Path(args.report_dir) / "timing.md").write_text(timing_markdown(out / "times.jsonl", [d for _, d in shown]))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(written["md"].read_text())
    print(f"wrote {written['md']} and {written['png']} ({time.time() - start:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
