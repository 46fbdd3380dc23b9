"""Runs one training job inside a torchrun/deepspeed launch and saves each rank's final state.

Usage: torchrun --nproc_per_node N tests/dist_worker.py SPEC.json
SPEC holds {"recipe": {...}, "ds_config": {...}, "out": "...", "options": {...}}.
"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import weights_and_masks  # noqa: E402

from dstrain import SparseTrainer, TrainerOptions, parse_recipe  # noqa: E402


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    options = TrainerOptions(output_dir=out, ds_config=spec.get("ds_config", {}), progress=False,
                             tensorboard=False, **spec.get("options", {}))
    trainer = SparseTrainer(parse_recipe(spec["recipe"]), options)
    result = trainer.train()
    state = weights_and_masks(trainer)
    state["revived"] = torch.tensor(trainer.registry.revived())
    # ZeRO / mixed precision: the fp32 master partitions must hold exact zeros too.
    state["master_revived"] = torch.tensor(sum(int((master[~mask] != 0).sum())
                                               for master, mask in trainer.partition_masks.masters_and_masks()))
    state["masked_masters"] = torch.tensor(len(trainer.partition_masks.masters_and_masks()))
    state["flattened"] = torch.tensor(trainer.partition_masks.flattened)
    torch.save({"state": state, "result": result}, out / f"rank{os.environ.get('RANK', '0')}.pt")


if __name__ == "__main__":
    main()
