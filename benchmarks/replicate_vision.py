#!/usr/bin/env python
"""Small-data replication of the ResNet50/ImageNet sparse pre-training grid.

    python benchmarks/replicate_vision.py                                   # all of recipes/replication/
    python benchmarks/replicate_vision.py --out runs/replication --report_dir docs/replication
    python benchmarks/replicate_vision.py --only gmp95 --only dense         # a subset (substring match)

Trains every recipe in recipes/replication/ (dense, GMP 90/95%, AC/DC 90/95%, each at 1x
and 3x epochs on the embedded digits set) one after another with SparseTrainer in this
process, writing OUT/<recipe name>/, then writes the under-training report
(report.md + report.png, see dstrain/report.py) to --report_dir.  Runs whose result.json
already exists are reused unless --force.  About 2-5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=str(REPO / "recipes" / "replication"),
                   help="folder of YAML recipes to run (default: recipes/replication)")
    p.add_argument("--out", default="runs/replication", help="run folders go to OUT/<recipe name>")
    p.add_argument("--report_dir", default=None, help="where report.md/report.png go (default: OUT/report)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only recipes whose file name contains TEXT (repeatable)")
    p.add_argument("--force", action="store_true", help="re-run recipes that already have a result.json")
    p.add_argument("--progress", action="store_true", help="show a progress bar per run")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: these small models run fastest on one thread, "
                        "and several threads stall badly when other processes share the cores)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.set_num_threads(args.threads)
    from dstrain import ConfigError, SparseTrainer, TrainerOptions, load_recipe
    from dstrain.report import write_report

    paths = sorted(Path(args.recipes).glob("*.yaml"))
    if args.only:
        paths = [p for p in paths if any(text in p.name for text in args.only)]
    if not paths:
        print(f"error: no recipes matched in {args.recipes}", file=sys.stderr)
        return 2
    out = Path(args.out)
    run_dirs = []
    start = time.time()
    try:
        recipes = [load_recipe(p) for p in paths]
        for i, recipe in enumerate(recipes, 1):
            run_dir = out / recipe.name
            run_dirs.append(run_dir)
            if (run_dir / "result.json").is_file() and not args.force:
                print(f"[{i}/{len(recipes)}] {recipe.name}: reusing {run_dir}", flush=True)
                continue
            t0 = time.time()
            # recomputed from scratch: a finished run was skipped above, an interrupted one is discarded
            options = TrainerOptions(output_dir=run_dir, progress=args.progress, tensorboard=False, overwrite=True)
            result = SparseTrainer(recipe, options).train()
            print(f"[{i}/{len(recipes)}] {recipe.name}: {result['metric']}={result['score']:.4f} "
                  f"sparsity={result['sparsity']:.4f} {time.time() - t0:.1f}s", flush=True)
        report_dir = Path(args.report_dir) if args.report_dir else out / "report"
        written = write_report(run_dirs, report_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(written["md"].read_text())
    print(f"wrote {written['md']} and {written['png']} ({time.time() - start:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
