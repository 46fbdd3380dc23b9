"""One rank of an N:M training run under torchrun: checks exact N:M after every optimizer step.

Usage: torchrun --nproc_per_node N tests/nm_dist_worker.py SPEC.json
SPEC holds {"recipe": {...}, "ds_config": {...}, "out": "...", "pattern": [N, M]}.
"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import NMChecker  # noqa: E402

from dstrain import SparseTrainer, TrainerOptions, distributed, parse_recipe  # noqa: E402


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    checker = NMChecker(tuple(spec["pattern"]))
    options = TrainerOptions(output_dir=out, ds_config=spec.get("ds_config", {}), progress=False, tensorboard=False)
    trainer = SparseTrainer(parse_recipe(spec["recipe"]), options, callbacks=[checker])
    result = trainer.train()
    torch.save({"checked": checker.checked, "steps": result["steps"], "masks": trainer.registry.state_dict(),
                "masked_masters": len(trainer.partition_masks.masters_and_masks())},
               out / f"rank{os.environ.get('RANK', '0')}.pt")
    distributed.shutdown()  # as launch/train.py does


if __name__ == "__main__":
    main()
