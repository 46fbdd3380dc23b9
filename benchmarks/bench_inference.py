"""Inference with 2:4 weights: dense vs semi-structured sparse matmuls, in the same run.

    python benchmarks/bench_inference.py                 # GPU: measure; CPU: dry run ("not measured: no GPU")
    python benchmarks/bench_inference.py --dtype bfloat16 --tokens 8192 --out bench_inference.md

Shapes: the six Linear layers of a BERT-base encoder block (q, k, v, attention output,
intermediate 768->3072, output 3072->768) at ``--tokens`` rows (batch 32 x sequence 128 by
default), and ResNet50's convolutions as the GEMMs an implicit-GEMM kernel runs (rows = batch x
output pixels, reduction = in_channels x kh x kw in the channels-last order dstrain's 2:4 masks
use, columns = out_channels); torch's semi-structured tensors take matmuls, not convolutions, so
a conv is measured as its GEMM.  Each weight gets an exact 2:4 mask by magnitude
(:func:`dstrain.sparsity.nm.nm_mask`); the dense row multiplies the same masked weight stored dense.

On a CUDA GPU with sparse tensor cores (compute capability 8.0+), each shape is timed with CUDA
events (``--warmup`` then ``--iters`` launches, median of ``--repeats``) for ``F.linear`` on the
dense weight and on ``torch.sparse.to_sparse_semi_structured(weight)``, the outputs are checked
to agree, and the table gives both times and the speed-up.  Anywhere else the script checks
what it can (every shape gets an exact 2:4 mask) and says plainly that nothing was measured.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dstrain.export import semi_structured_unavailable  # noqa: E402
from dstrain.sparsity.nm import is_nm, nm_mask  # noqa: E402

Shape = Tuple[str, int, int, int]  # (name, rows M, reduction K, columns N)


def bert_base_shapes(tokens: int) -> List[Shape]:
    return [(f"bert.{n}", tokens, k, o) for n, k, o in (
        ("attention.q", 768, 768), ("attention.k", 768, 768), ("attention.v", 768, 768),
        ("attention.output", 768, 768), ("intermediate", 768, 3072), ("output", 3072, 768))]


def resnet50_shapes(batch: int) -> List[Shape]:
    """(name, batch*H*W, Cin*kh*kw, Cout) for torchvision ResNet50's distinct conv shapes at 224x224.

    ``layerS.convN`` stands for that conv in every block of stage S with the same shape; conv1 (3 input
    channels) is left out: it cannot be 2:4 (it stays dense in the 2:4 recipe).
    """
    convs = []
    for stage, (width, hw, blocks) in enumerate(((64, 56, 3), (128, 28, 4), (256, 14, 6), (512, 7, 3)), 1):
        cin = 64 if stage == 1 else width * 2
        in_hw = hw * 2 if stage > 1 else hw  # v1.5: the stride is in conv2 and the downsample
        convs.append((f"resnet50.layer{stage}.0.conv1", batch * in_hw ** 2, cin, width))
        convs.append((f"resnet50.layer{stage}.0.downsample", batch * hw * hw, cin, width * 4))
        convs.append((f"resnet50.layer{stage}.conv2", batch * hw * hw, width * 9, width))
        convs.append((f"resnet50.layer{stage}.conv3", batch * hw * hw, width, width * 4))
        convs.append((f"resnet50.layer{stage}.1.conv1", batch * hw * hw, width * 4, width))
    convs.append(("resnet50.fc", batch, 2048, 1000))
    return convs


def _time_cuda(fn, warmup: int, iters: int, repeats: int) -> float:
    """Median milliseconds per call over ``repeats`` batches of ``iters`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


def run(shapes: Sequence[Shape], device: str, dtype: torch.dtype, warmup: int, iters: int, repeats: int) -> List[dict]:
    rows = []
    reason = semi_structured_unavailable(torch.device(device), dtype)
    for name, m, k, n in shapes:
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(n, k, generator=gen)
        weight = weight * nm_mask(weight, (2, 4))
        assert is_nm(weight, (2, 4)), name
        row = {"shape": name, "M": m, "K": k, "N": n}
        if reason is None:
            w = weight.to(device, dtype)
            x = torch.randn(m, k, generator=gen).to(device, dtype)
            sparse = torch.sparse.to_sparse_semi_structured(w)
            torch.testing.assert_close(F.linear(x, sparse), F.linear(x, w), rtol=2e-2, atol=2e-1)
            row["dense_ms"] = _time_cuda(lambda: F.linear(x, w), warmup, iters, repeats)
            row["sparse_ms"] = _time_cuda(lambda: F.linear(x, sparse), warmup, iters, repeats)
            row["speedup"] = row["dense_ms"] / row["sparse_ms"]
        rows.append(row)
    return rows


def table(rows: List[dict], header: str) -> str:
    lines = [header, "", "| shape | M (rows) | K (reduction) | N | dense ms | 2:4 ms | speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "dense_ms" in r:
            lines.append(f"| {r['shape']} | {r['M']} | {r['K']} | {r['N']} | {r['dense_ms']:.3f} | {r['sparse_ms']:.3f} "
                         f"| {r['speedup']:.2f}x |")
        else:
            lines.append(f"| {r['shape']} | {r['M']} | {r['K']} | {r['N']} | not measured | not measured | - |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--tokens", type=int, default=32 * 128, help="BERT rows: batch x sequence length")
    p.add_argument("--batch", type=int, default=64, help="ResNet50 images per batch")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    reason = semi_structured_unavailable(torch.device(args.device), dtype)
    shapes = bert_base_shapes(args.tokens) + resnet50_shapes(args.batch)
    rows = run(shapes, args.device, dtype, args.warmup, args.iters, args.repeats)
    if reason is None:
        header = (f"Device: {torch.cuda.get_device_name(torch.device(args.device))}, torch {torch.__version__}, "
                  f"{args.dtype}; median of {args.repeats} x {args.iters} launches after {args.warmup} warm-up.")
    else:
        header = (f"not measured: no GPU ({reason}). Dry run: {len(rows)} shapes built with exact 2:4 masks; "
                  f"run this script on a CUDA GPU with compute capability 8.0+ to measure.")
    text = table(rows, header)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
