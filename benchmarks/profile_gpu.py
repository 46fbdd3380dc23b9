"""Where the time of a fused masked step and of the global threshold goes: a profile, not a benchmark.

    python benchmarks/profile_gpu.py --out OUT_DIR            # GPU: BERT-base AdamW step + ResNet50 threshold
    DSTRAIN_BENCH_SMOKE=1 TRITON_INTERPRET=1 python benchmarks/profile_gpu.py --out OUT_DIR   # CPU check of the script

Why: the benchmark tables say how fast a step is; when it misses its target (a fused
step below ~85 % of the copy bandwidth, a threshold selection slower than a few copies of
the weights), the question is whether the device time is in the kernels or between them
(launches, host work, synchronisations).  For each case this records, with
``torch.profiler``, the wall time per call, the device time summed over kernels, the
number of kernel launches per call, and the table of kernels by device time, into
``OUT/profile.json`` and ``OUT/profile.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import DEVICE, make_masks, make_params, model_shapes, sync  # noqa: E402

from dstrain.kernels import kth_smallest_abs, pack_mask  # noqa: E402
from dstrain.optim import MaskedAdamW  # noqa: E402


def adamw_step(model: str) -> Callable[[], None]:
    """One planned Triton AdamW step with packed bit masks (the fastest row of bench_optim)."""
    params = make_params(model_shapes(model))
    masks = [None if m is None else pack_mask(m) for m in make_masks(params)]
    by_id = {id(p): m for p, m in zip(params, masks)}
    opt = MaskedAdamW(params, lr=1e-3, weight_decay=0.01, backend="triton", mask_source=lambda p: by_id.get(id(p)))
    return opt.step


def threshold(model: str) -> Callable[[], None]:
    """The exact global magnitude threshold at 90 % over every weight of the set."""
    params = [p.detach() for p in make_params(model_shapes(model), with_grads=False)]
    k = int(0.9 * sum(p.numel() for p in params))
    return lambda: kth_smallest_abs(params, k)


CASES: Dict[str, Callable[[], Callable[[], None]]] = {
    "bert_base adamw step (triton, bit masks)": lambda: adamw_step("bert_base"),
    "resnet50 threshold 90% (kth_smallest_abs)": lambda: threshold("resnet50"),
}


def profile(fn: Callable[[], None], calls: int) -> Dict:
    for _ in range(3):  # warm-up: compilation, autotuning, plan building
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    wall_ms = (time.perf_counter() - t0) * 1e3 / calls
    activities = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync()
    kernels: List[Dict] = []
    for e in prof.key_averages():
        device_us = getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0)
        if device_us > 0 and getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type):
            kernels.append({"name": e.key[:90], "calls_per_step": e.count / calls, "device_ms_per_step": device_us / 1e3 / calls})
    kernels.sort(key=lambda r: -r["device_ms_per_step"])
    host = sorted(prof.key_averages(), key=lambda e: -e.cpu_time_total)[:8]
    return {"wall_ms_per_call": wall_ms, "calls": calls,
            "device_ms_per_call": sum(k["device_ms_per_step"] for k in kernels),
            "kernel_launches_per_call": sum(k["calls_per_step"] for k in kernels),
            "kernels": kernels[:15],
            "host_ops": [{"name": e.key[:90], "cpu_ms_per_call": e.cpu_time_total / 1e3 / calls,
                          "count_per_call": e.count / calls} for e in host]}


def markdown(results: Dict[str, Dict], device: str) -> str:
    lines = [f"Profile on {device}, torch {torch.__version__}.", ""]
    for name, r in results.items():
        lines += [f"#### {name}", "",
                  f"wall {r['wall_ms_per_call']:.3f} ms per call; device time in kernels {r['device_ms_per_call']:.3f} ms; "
                  f"{r['kernel_launches_per_call']:.1f} kernel launches per call", "",
                  "| kernel | launches per call | device ms per call |", "|---|---:|---:|"]
        lines += [f"| `{k['name']}` | {k['calls_per_step']:.1f} | {k['device_ms_per_step']:.4f} |" for k in r["kernels"]]
        lines += ["", "| host op (self + children) | count per call | cpu ms per call |", "|---|---:|---:|"]
        lines += [f"| `{h['name']}` | {h['count_per_call']:.1f} | {h['cpu_ms_per_call']:.3f} |" for h in r["host_ops"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (smoke)"
    results = {name: profile(make(), args.calls) for name, make in CASES.items()}
    (out / "profile.json").write_text(json.dumps({"device": device, "results": results}, indent=1))
    text = markdown(results, device)
    (out / "profile.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
