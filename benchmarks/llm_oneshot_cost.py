#!/usr/bin/env python
"""Time and memory of one one-shot Wanda / SparseGPT pass on SmolLM2-135M (the recipes' calibration: 32 x 256 tokens).

    python benchmarks/llm_oneshot_cost.py                               # wanda and sparsegpt, 50 % and 2:4
    python benchmarks/llm_oneshot_cost.py --cases wanda50 sparsegpt50   # some of them

Each pass runs in a fresh process of its own, outside the trainer (no DeepSpeed, no optimizer
state): the recipe's task and model, the mask registry and the criterion with the task's
calibration windows, then ``criterion.update(0.5)`` timed with ``time.perf_counter``.  Memory:
the resident set size sampled every 10 ms from /proc/self/statm during the pass (its peak, and
the peak minus the RSS just before it: what the pass itself adds on top of the loaded model),
and ``resource.getrusage`` max RSS of the whole process.  Prints one JSON line per pass.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CASES = ["wanda50", "wanda24", "sparsegpt50", "sparsegpt24"]
GIB = 1024 ** 3


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's RSS every ``period`` seconds while the ``with`` block runs."""

    def __init__(self, period: float = 0.01) -> None:
        self.period, self.peak, self._stop = period, 0, threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.before = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.period)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def one(case: str) -> dict:
    import torch

    from dstrain.recipe import load_recipe
    from dstrain.sparsity.criterion import DataHooks, build_criterion
    from dstrain.sparsity.registry import MaskRegistry, PrunableSelection
    from dstrain.tasks import build_task

    recipe = load_recipe(REPO / "recipes" / "llm" / f"smollm2_{case}_oneshot.yaml")
    task = build_task(recipe.task)
    task.build_datasets()  # tokenized before the pass: not part of it
    model = task.build_model().eval()
    registry = MaskRegistry(model, PrunableSelection.from_pruning(recipe.pruning))
    criterion = build_criterion(recipe.pruning, registry)
    criterion.attach(DataHooks(model, loss=None, batches=None, calibration=task.calibration_sequences))
    with torch.no_grad(), PeakRSS() as rss:
        start = time.perf_counter()
        criterion.update(0.5, 0)
        seconds = time.perf_counter() - start
    log = criterion.log[-1]
    return {"case": case, "pass_s": round(seconds, 1), "capture_s": round(log["capture_s"], 2),
            "calibration_tokens": log["tokens"], "threads": torch.get_num_threads(),
            "rss_before_gib": round(rss.before / GIB, 3), "rss_peak_during_gib": round(rss.peak / GIB, 3),
            "pass_adds_gib": round((rss.peak - rss.before) / GIB, 3),
            "process_max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
            "prunable_weights": registry.numel, "sparsity": registry.weight_sparsity(),
            "load_average_1min": os.getloadavg()[0]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=CASES, default=CASES, help="each in a process of its own")
    p.add_argument("--only", choices=CASES, default=None, help=argparse.SUPPRESS)  # one case, in this process
    args = p.parse_args(argv)
    if args.only:
        print(json.dumps(one(args.only)), flush=True)
        return 0
    for case in args.cases:
        out = subprocess.run([sys.executable, __file__, "--only", case], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return out.returncode
        print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
