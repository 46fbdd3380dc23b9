"""Bytes one rank holds under ZeRO-3 with dstrain's masks, by kind, on a BERT-base-sized model (109.5M).

    DS_ACCELERATOR=cpu torchrun --nproc_per_node N benchmarks/zero3_memory.py --out OUT_DIR [--bf16]

Why counted from the tensors and not from the process's memory: the question is what each kind
of state costs per owned weight (weights, fp32 masters, gradients, optimizer moments, masks),
which the allocator's high-water mark mixes with activations and caches.  The model is a
random-initialised ``BertForSequenceClassification(BertConfig())``; one masked AdamW step on
a batch of 2 x 16 tokens makes DeepSpeed allocate its gradient and optimizer state, then every
tensor of each kind is summed on this rank (rank 0 writes ``zero3_memory_world<N>.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dstrain import parse_recipe  # noqa: E402
from dstrain.run.engine import build_engine  # noqa: E402


class _Task:
    channels_last = False
    config = None


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not torch.is_tensor(t):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def measure(bf16: bool) -> Dict[str, float]:
    import deepspeed
    from transformers import BertConfig, BertForSequenceClassification

    deepspeed.init_distributed(verbose=False)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2))
    numel = sum(p.numel() for p in model.parameters())
    recipe = parse_recipe({"name": "mem", "task": {"name": "digits"}, "training": {"epochs": 1, "batch_size": 2 * dist.get_world_size()},
                           "optimizer": {"name": "adamw", "lr": 1e-4, "backend": "cpu"},
                           "pruning": {"schedule": {"kind": "constant", "sparsity": 0.9}}})
    ds_config = {"train_batch_size": 2 * dist.get_world_size(), "train_micro_batch_size_per_gpu": 2,
                 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                 "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0, "steps_per_print": 10**9}
    if bf16:
        ds_config["bf16"] = {"enabled": True}
    built = build_engine(model, _Task(), recipe, ds_config, 1, 3, torch.device("cpu"), lambda _: None)
    engine, optimizer = built.engine, built.optimizer
    built.controller.begin_step()  # the step-0 masks, on the partitions
    ids = torch.randint(0, 30000, (2, 16))
    out = engine(input_ids=ids, labels=torch.zeros(2, dtype=torch.long))
    engine.backward(out.loss)
    grads = [g for group in getattr(optimizer, "averaged_gradients", {}).values() for g in group]
    grads += [getattr(optimizer, "grad_partitions_flat_buffer", None)]
    engine.step()
    state = [v for s in built.client_optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    return {
        "world": dist.get_world_size(), "model_params": numel, "bf16": bf16,
        "owned_elements": sum(t.numel() for t in optimizer.fp32_partitioned_groups_flat),
        "weights_partition_bytes": _bytes(optimizer.fp16_partitioned_groups_flat),
        "fp32_master_bytes": _bytes(optimizer.fp32_partitioned_groups_flat),
        "gradient_bytes": _bytes(grads),
        "optimizer_state_bytes": _bytes(state),
        "mask_bytes": _bytes(p.mask for p in built.partition_masks.partitions.values()),
        "full_mask_bytes_if_unpartitioned": numel,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.bf16)
    if dist.get_rank() == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = f"zero3_memory_world{result['world']}{'_bf16' if args.bf16 else ''}.json"
        (out / name).write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
    dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
