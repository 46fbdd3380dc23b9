#!/usr/bin/env python
"""oBERT vs magnitude pruning on digits, everything else equal: several seeds, mean +- standard error.

    nice -n 10 python benchmarks/compare_criteria.py --seeds 0 1 2 --sparsities 0.9 0.97 --out runs/criteria

Runs recipes/digits_gmp90.yaml (magnitude) and recipes/digits_obert90.yaml (oBERT), which differ only in
``pruning.criterion``/``pruning.obert``, through launch/train.py with ``training.seed`` and
``pruning.schedule.final_sparsity`` overridden, one run at a time (seed-major, so an interrupted
sweep still has balanced seeds).  Writes every run's result.json and a summary.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = {"magnitude": REPO / "recipes" / "digits_gmp90.yaml", "obert": REPO / "recipes" / "digits_obert90.yaml"}


def summarize(scores):
    mean = statistics.fmean(scores)
    se = statistics.stdev(scores) / len(scores) ** 0.5 if len(scores) > 1 else float("nan")
    return {"n": len(scores), "mean": mean, "se": se, "scores": scores}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.97])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "criteria")
    args = p.parse_args()
    results = {}
    for seed in args.seeds:
        for sparsity in args.sparsities:
            for criterion, recipe in RECIPES.items():
                out = args.out / f"{criterion}_s{sparsity}_seed{seed}"
                if next(out.glob("*/result.json"), None) is None:
                    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--recipe", str(recipe),
                           "--output_dir", str(out), "--set", f"training.seed={seed}",
                           "--set", f"pruning.schedule.final_sparsity={sparsity}", "--no_progress"]
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                result = next(out.glob("*/result.json"))  # launch/train.py writes OUTPUT_DIR/<recipe name>/
                res = json.loads(result.read_text())
                results.setdefault(f"{criterion}@{sparsity}", []).append(res["score"])
                summary = {k: summarize(v) for k, v in results.items()}
                (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
                print(criterion, sparsity, seed, res["score"], f"{res['wall_time_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
