"""The optimizer step of ZeRO-3 with ``offload_optimizer: {device: cpu}``: dstrain's masked C++ step against
DeepSpeed's ``DeepSpeedCPUAdam`` on the same flat fp32 partitions, in one run.

    python benchmarks/bench_offload.py --out OUT_DIR [--world 1 2] [--steps 10]

Why: under offload DeepSpeed steps the CPU partitions with ``DeepSpeedCPUAdam``, which
knows no mask; dstrain sets ``zero_force_ds_cpu_optimizer: false`` and steps them with its
own masked AdamW (``backend="cpu"``, one C++ pass that also zeroes pruned weights and
moments).  The question is what the mask costs there.  Rows, each on the partition one
rank owns at world size ``--world`` of a parameter set (BERT-base: 109.5M; a 350M set:
24 BERT-large-like layers), with a 90 % random mask on the weight matrices:

* ``ds_cpu_adam``: ``DeepSpeedCPUAdam`` (no mask: what DeepSpeed runs, not a sparse step);
* ``ds_cpu_adam + mask``: the same, then the pruned weights and both moments zeroed with
  ``masked_fill_`` (what a mask costs with DeepSpeed's optimizer);
* ``dstrain masked C++``: ``MaskedAdamW(backend="cpu")`` with the mask.

Median milliseconds per step over ``--steps`` steps after 2 warm-up steps, the three methods'
steps interleaved; torch and OpenMP threads as given (``torch.get_num_threads()``); ratios
against ``ds_cpu_adam`` in the same run.
The first run builds DeepSpeed's cpu_adam op (about a minute).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shapes import bert_base_shapes  # noqa: E402

from dstrain.optim import MaskedAdamW  # noqa: E402

HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def large_shapes() -> List[Tuple[int, ...]]:
    """~350M parameters: BERT-large's width (1024, 4096) at 24 layers, with its embeddings."""
    return bert_base_shapes(hidden=1024, layers=24, intermediate=4096)


SETS: Dict[str, Callable[[], List[Tuple[int, ...]]]] = {"bert_base": bert_base_shapes, "large_350m": large_shapes}


def partition(shapes: List[Tuple[int, ...]], world: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat fp32 partition, its gradient, its mask) of rank 0 at ``world``: ZeRO-3 cuts each tensor in ``world``."""
    gen = torch.Generator().manual_seed(seed)
    parts, masks = [], []
    for shape in shapes:
        numel = 1
        for d in shape:
            numel *= d
        own = -(-numel // world)
        parts.append(own)
        masks.append((torch.rand(own, generator=gen) < 0.1) if len(shape) >= 2 else torch.ones(own, dtype=torch.bool))
    total = sum(parts)
    param = torch.randn(total, generator=gen)
    grad = torch.randn(total, generator=gen)
    return param, grad, torch.cat(masks)


def _time_interleaved(steps_by_name: Dict[str, Callable[[], None]], steps: int) -> Dict[str, float]:
    """Median ms per step of each, the steps interleaved (A, B, C, A, B, C, ...) so that a change of load
    on a shared machine falls on every method alike."""
    for step in steps_by_name.values():
        for _ in range(2):
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def measure(name: str, world: int, steps: int) -> Dict[str, float]:
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    base, grad, mask = partition(SETS[name](), world)
    p = torch.nn.Parameter(base.clone())
    p.grad = grad.clone()
    ds = DeepSpeedCPUAdam([p], adamw_mode=True, **HYPER)
    p2 = torch.nn.Parameter(base.clone())
    p2.grad = grad.clone()
    ds_masked = DeepSpeedCPUAdam([p2], adamw_mode=True, **HYPER)

    pruned = ~mask  # made once, as a training loop would keep it

    def masked_after() -> None:
        ds_masked.step()
        with torch.no_grad():
            p2.masked_fill_(pruned, 0.0)
            state = ds_masked.state[p2]
            state["exp_avg"].masked_fill_(pruned, 0.0)
            state["exp_avg_sq"].masked_fill_(pruned, 0.0)

    q = torch.nn.Parameter(base.clone())
    q.grad = grad.clone()
    ours = MaskedAdamW([q], backend="cpu", mask_source=lambda t: mask, **HYPER)
    rows = _time_interleaved({"ds_cpu_adam": ds.step, "ds_cpu_adam + mask": masked_after,
                              "dstrain masked C++": ours.step}, steps)
    rows["elements"] = float(base.numel())
    return rows


def markdown(results: Dict[str, Dict[str, float]], threads: int) -> str:
    lines = [f"CPU, {threads} torch threads; median ms per step; ratio = time / ds_cpu_adam (same run)", "",
             "| partition | elements | ds_cpu_adam | ds_cpu_adam + mask | dstrain masked C++ |", "|---|---:|---:|---:|---:|"]
    for key, r in results.items():
        base = r["ds_cpu_adam"]
        lines.append(f"| {key} | {int(r['elements']):,} | {base:.1f} ms | {r['ds_cpu_adam + mask']:.1f} ms "
                     f"({r['ds_cpu_adam + mask'] / base:.2f}x) | {r['dstrain masked C++']:.1f} ms "
                     f"({r['dstrain masked C++'] / base:.2f}x) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--world", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {f"{name}, rank 0 of {world}": measure(name, world, args.steps) for name in args.sets for world in args.world}
    (out / "bench_offload.json").write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=1))
    text = markdown(results, torch.get_num_threads())
    (out / "bench_offload.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
