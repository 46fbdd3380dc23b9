#!/usr/bin/env python
"""oBERT vs magnitude pruning, everything else equal: several seeds, mean +- standard error.

    python benchmarks/compare_criteria.py --task fashion       # Fashion-MNIST, runs/criteria_fashion
    nice -n 10 python benchmarks/compare_criteria.py --task digits --seeds 0 1 2 --sparsities 0.9 0.97

Runs a pair of recipes that differ only in ``pruning.criterion``/``pruning.obert`` (``--task``:
digits: recipes/digits_gmp90.yaml and digits_obert90.yaml; fashion: recipes/fashion_criteria/)
through launch/train.py with ``training.seed`` and ``pruning.schedule.final_sparsity`` overridden,
one run at a time (seed-major, so an interrupted sweep still has balanced seeds; finished runs are
reused).  Writes every run's result.json and a summary.json: per criterion and sparsity the scores,
mean and standard error, and per sparsity the difference oBERT - magnitude with its standard error
(sqrt(se_a^2 + se_b^2)); ``beyond_noise`` is |difference| > 2 standard errors.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
RECIPES = {
    "digits": {"magnitude": REPO / "recipes" / "digits_gmp90.yaml", "obert": REPO / "recipes" / "digits_obert90.yaml"},
    "fashion": {"magnitude": REPO / "recipes" / "fashion_criteria" / "magnitude90_1x.yaml",
                "obert": REPO / "recipes" / "fashion_criteria" / "obert90_1x.yaml"},
}


def summarize(scores):
    mean = statistics.fmean(scores)
    se = statistics.stdev(scores) / len(scores) ** 0.5 if len(scores) > 1 else float("nan")
    return {"n": len(scores), "mean": mean, "se": se, "scores": scores}


def differences(results: Dict[str, List[float]], sparsities: List[float]) -> Dict[str, Dict[str, Any]]:
    """oBERT - magnitude per sparsity, with the standard error of the difference of two means."""
    out = {}
    for sparsity in sparsities:
        a, b = results.get(f"obert@{sparsity}"), results.get(f"magnitude@{sparsity}")
        if not a or not b or len(a) < 2 or len(b) < 2:
            continue
        sa, sb = summarize(a), summarize(b)
        diff, se = sa["mean"] - sb["mean"], math.hypot(sa["se"], sb["se"])
        out[str(sparsity)] = {"obert_minus_magnitude": diff, "se": se, "beyond_noise": abs(diff) > 2 * se}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(RECIPES), default="fashion", help="which recipe pair (default fashion)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.97])
    p.add_argument("--out", type=Path, default=None, help="default runs/criteria_<task>")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra recipe override for every run (e.g. task.data_dir=...)")
    args = p.parse_args(argv)
    out_root = args.out or REPO / "runs" / f"criteria_{args.task}"
    out_root.mkdir(parents=True, exist_ok=True)
    results: Dict[str, List[float]] = {}
    walls: Dict[str, List[float]] = {}
    for seed in args.seeds:
        for sparsity in args.sparsities:
            for criterion, recipe in RECIPES[args.task].items():
                out = out_root / f"{criterion}_s{sparsity}_seed{seed}"
                if next(out.glob("*/result.json"), None) is None:
                    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--recipe", str(recipe),
                           "--output_dir", str(out), "--set", f"training.seed={seed}",
                           "--set", f"pruning.schedule.final_sparsity={sparsity}", "--no_progress", "--overwrite"]
                    for pair in args.set:
                        cmd += ["--set", pair]
                    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    if done.returncode != 0:  # the trainer's one-line error, not a traceback of this script
                        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
                        print(f"error: {criterion} at {sparsity}, seed {seed}: {lines[-1]}", file=sys.stderr)
                        return 2
                result = next(out.glob("*/result.json"))  # launch/train.py writes OUTPUT_DIR/<recipe name>/
                res = json.loads(result.read_text())
                results.setdefault(f"{criterion}@{sparsity}", []).append(res["score"])
                walls.setdefault(f"{criterion}@{sparsity}", []).append(round(res["wall_time_s"], 1))
                summary = {k: summarize(v) for k, v in results.items()}
                summary["differences"] = differences(results, args.sparsities)
                summary["wall_time_s"] = walls
                (out_root / "summary.json").write_text(json.dumps(summary, indent=2))
                print(criterion, sparsity, seed, res["score"], f"{res['wall_time_s']:.0f}s", flush=True)
    print(json.dumps(differences(results, args.sparsities), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
