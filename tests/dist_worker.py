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

from dstrain import (  # noqa: E402
    SparseTrainer,
    TrainerCallback,
    TrainerOptions,
    distributed,
    parse_recipe,
)


class CollectiveCounter:
    """Counts torch.distributed collectives issued while masks are being recomputed."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
             "reduce_scatter", "reduce_scatter_tensor", "all_to_all_single", "barrier")

    def __init__(self) -> None:
        import torch.distributed as dist

        from dstrain.sparsity.magnitude import MagnitudeCriterion

        self.inside, self.count, self.updates = False, 0, 0
        for name in self.NAMES:
            original = getattr(dist, name)
            setattr(dist, name, self._counting(original))
        update = MagnitudeCriterion.update

        def counted_update(criterion, *args, **kwargs):
            self.inside, self.updates = True, self.updates + 1
            try:
                return update(criterion, *args, **kwargs)
            finally:
                self.inside = False

        MagnitudeCriterion.update = counted_update

        from dstrain.sparsity.obert import ObertCriterion

        self.obert_count, self.obert_updates = 0, 0
        obert_update = ObertCriterion.update

        def counted_obert_update(pruner, *args, **kwargs):
            before = self.count
            self.inside, self.obert_updates = True, self.obert_updates + 1
            try:
                return obert_update(pruner, *args, **kwargs)
            finally:
                self.inside = False
                self.obert_count += self.count - before
                self.count = before

        ObertCriterion.update = counted_obert_update

    def _counting(self, fn):
        def wrapper(*args, **kwargs):
            if self.inside:
                self.count += 1
            return fn(*args, **kwargs)

        return wrapper


class InvariantEveryStep(TrainerCallback):
    """After every compressed step: pruned entries are 0 in the weights (ZeRO-3: the 16-bit partitions),
    the fp32 masters and every optimizer state buffer of the masters."""

    def __init__(self) -> None:
        self.steps, self.nonzero = 0, 0

    def on_step_end(self, trainer) -> None:
        self.steps += 1
        if not trainer.controller.last_step_compressed:
            return
        self.nonzero += trainer.registry.revived()
        for master, mask in trainer.partition_masks.masters_and_masks():
            self.nonzero += int((master[~mask] != 0).sum())
            for value in trainer.client_optimizer.state.get(master, {}).values():
                if torch.is_tensor(value) and value.shape == master.shape:
                    self.nonzero += int((value[~mask] != 0).sum())


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    counter = CollectiveCounter()
    out = Path(spec["out"])
    options = TrainerOptions(output_dir=out, ds_config=spec.get("ds_config", {}), progress=False,
                             tensorboard=False, **spec.get("options", {}))
    watch = InvariantEveryStep()
    trainer = SparseTrainer(parse_recipe(spec["recipe"]), options, callbacks=[watch] if spec.get("watch_every_step") else [])
    result = trainer.train()
    state = weights_and_masks(trainer)
    state["revived"] = torch.tensor(trainer.registry.revived())
    # ZeRO / mixed precision: the fp32 master partitions must hold exact zeros too.
    state["master_revived"] = torch.tensor(sum(int((master[~mask] != 0).sum())
                                               for master, mask in trainer.partition_masks.masters_and_masks()))
    state["masked_masters"] = torch.tensor(len(trainer.partition_masks.masters_and_masks()))
    state["collectives_in_mask_updates"] = torch.tensor(counter.count)
    state["mask_updates"] = torch.tensor(counter.updates)
    state["obert_updates"] = torch.tensor(counter.obert_updates)
    state["collectives_in_obert_updates"] = torch.tensor(counter.obert_count)
    state["flattened"] = torch.tensor(trainer.partition_masks.flattened)
    state["steps_watched"] = torch.tensor(watch.steps)
    state["teacher_partitioned"] = torch.tensor(type(trainer.teacher).__name__ == "PartitionedTeacher")
    state["pruned_nonzero_any_step"] = torch.tensor(watch.nonzero)
    torch.save({"state": state, "result": result}, out / f"rank{os.environ.get('RANK', '0')}.pt")
    distributed.shutdown()  # as launch/train.py does


if __name__ == "__main__":
    main()
