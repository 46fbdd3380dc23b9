#!/usr/bin/env python
"""Time and memory of one oBERT mask update for BERT-base's prunable set (72 encoder matrices, 84.9M weights).

    nice -n 10 python benchmarks/obert_update.py --world 8 --grads 8 [--bert_grads 2]

Measures one rank's work at the given world size with random gradients/weights of the
right shapes: the per-gradient Woodbury update of its share of the B x B blocks (the
cost that is multiplied by num_grads), scoring its share, the global selection over all
84.9M scores (every rank does it), and the exact OBS correction of its share at the
final sparsity.  Peak memory is the process's max RSS.  ``--bert_grads N`` additionally
times N forward+backward passes of a randomly initialised BERT-base (transformers,
no download) at the oBERT gradient batch (16 x 128 tokens): the other per-gradient cost.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from dstrain.sparsity.fisher import BlockFisherInverse, BlockLayout, fisher_bytes
from dstrain.sparsity.magnitude import masks_below_threshold, default_selector, num_to_prune

NUMELS = [768 * 768] * 48 + [768 * 3072] * 24


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=8)
    p.add_argument("--grads", type=int, default=8, help="Woodbury updates timed (num_grads in the recipe: 1024)")
    p.add_argument("--block_size", type=int, default=50)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--bert_grads", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(0)
    layout = BlockLayout(tuple(NUMELS), args.block_size)
    lo, hi = layout.share(0, args.world)
    out = {"threads": torch.get_num_threads(), "world": args.world, "blocks_per_rank": hi - lo,
           "estimate_gib": {k: v / 1024 ** 3 for k, v in fisher_bytes(NUMELS, args.block_size, args.world).items()
                            if k != "blocks_per_rank"}}
    t = time.perf_counter()
    finv = BlockFisherInverse(hi - lo, args.block_size, 1024, 1e-7)
    out["init_s"] = time.perf_counter() - t
    times, cpu = [], []
    for _ in range(args.grads):
        g = torch.randn(hi - lo, args.block_size) * 1e-3
        t, c = time.perf_counter(), time.process_time()
        finv.add_grad(g)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    out["woodbury_s_per_grad"] = {"median": statistics.median(times), "min": min(times), "n": len(times),
                                  "cpu_median": statistics.median(cpu)}
    w = torch.randn(layout.num_blocks, args.block_size) * 0.05
    t = time.perf_counter()
    # other ranks' shares: the same formula with an untouched block (diag = 1/lambda), as after the all-reduce
    scores = w.square() / (2 * 1e7)
    scores[lo:hi] = finv.scores(w[lo:hi])
    out["score_s"] = time.perf_counter() - t
    tensors = [s.view(-1) for s in layout.unpad(scores)]
    t, c = time.perf_counter(), time.process_time()
    k = num_to_prune(sum(NUMELS), args.sparsity)
    masks = masks_below_threshold(tensors, k, default_selector(tensors))
    out["global_select_s"] = time.perf_counter() - t
    out["global_select_cpu_s"] = time.process_time() - c
    pruned = layout.pad([~m for m in masks])
    t, c = time.perf_counter(), time.process_time()
    finv.obs_update(w[lo:hi], pruned[lo:hi])
    out["obs_update_s"] = time.perf_counter() - t
    out["obs_update_cpu_s"] = time.process_time() - c
    out["pruned_in_share"] = float(pruned[lo:hi].float().mean())
    out["peak_rss_gib"] = rss_gib()
    if args.bert_grads:
        from transformers import BertConfig, BertForSequenceClassification

        model = BertForSequenceClassification(BertConfig(num_labels=3)).eval()
        params = [p for n, p in model.named_parameters() if "encoder" in n and n.endswith("weight") and p.dim() == 2]
        ids = torch.randint(0, 30522, (16, 128))
        labels = torch.randint(0, 3, (16,))
        bt = []
        for _ in range(args.bert_grads):
            t = time.perf_counter()
            loss = model(input_ids=ids, labels=labels).loss
            torch.autograd.grad(loss, params)
            bt.append(time.perf_counter() - t)
        out["bert_base_fwd_bwd_s_per_grad"] = {"median": statistics.median(bt), "n": len(bt)}
        out["peak_rss_gib"] = rss_gib()
    w_s = out["woodbury_s_per_grad"]["median"]
    out["extrapolated_1024_grads_woodbury_s"] = 1024 * w_s
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
