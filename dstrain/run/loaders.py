"""The run's data loaders: training shards, exact evaluation shards, resumed epochs, gradient batches.

Why these rules: every rank must see a disjoint share of each epoch in a seeded order
(so a run is reproducible and resumable), evaluation must score every example exactly
once over all ranks (no padding: metrics are exact), and a resumed epoch must continue
where the checkpoint stopped without re-reading what was already trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dstrain.errors import ConfigError


class ShardSampler(Sampler):
    """Evaluation sampler: rank r takes indices r, r+W, ...; no padding so metrics are exact."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Loaders:
    train_sampler: DistributedSampler
    train: DataLoader
    eval: DataLoader
    steps_per_epoch: int


def build_loaders(task: Any, train_set: Dataset, eval_set: Dataset, recipe: Any, micro_batch: int, gas: int,
                  rank: int, world: int, num_workers: int, device: torch.device) -> Loaders:
    """Training and evaluation loaders for this rank; the run option ``num_workers`` wins over the task's."""
    task_config = getattr(task, "config", None)
    workers = num_workers or int(getattr(task_config, "num_workers", 0))
    pin = getattr(task_config, "pin_memory", None)
    pin = device.type == "cuda" if pin is None else bool(pin)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=recipe.training.seed, drop_last=True)
    train = DataLoader(train_set, batch_size=micro_batch, sampler=sampler, drop_last=True,
                       collate_fn=task.train_collate_fn or task.collate_fn, num_workers=workers,
                       pin_memory=pin, persistent_workers=workers > 0)
    evaluation = DataLoader(eval_set, batch_size=max(micro_batch, 64), sampler=ShardSampler(len(eval_set), rank, world),
                            collate_fn=task.collate_fn, num_workers=workers)
    steps_per_epoch = len(train) // gas
    if steps_per_epoch < 1:
        raise ConfigError("training.batch_size", f"{recipe.training.batch_size} is larger than "
                          f"the training set ({len(train_set)} examples)", "use a smaller batch_size")
    return Loaders(sampler, train, evaluation, steps_per_epoch)


def epoch_batches(loaders: Loaders, skip_batches: int) -> Iterator[Tuple[int, Any]]:
    """(micro-batch index, batch) of this epoch, starting after ``skip_batches`` (a resumed epoch).

    A resumed epoch starts its sampler after the batches already trained instead of
    loading and dropping them: they are not decoded again, and their random
    augmentations do not consume random numbers that the uninterrupted run drew for
    later batches (with loader workers, augmentations still differ after a resume).
    """
    if not skip_batches:
        return enumerate(loaders.train)
    base = loaders.train
    indices = list(loaders.train_sampler)[skip_batches * base.batch_size:]
    loader = DataLoader(base.dataset, batch_size=base.batch_size, sampler=indices, drop_last=True,
                        collate_fn=base.collate_fn, num_workers=base.num_workers, pin_memory=base.pin_memory)
    rng = torch.get_rng_state()  # the uninterrupted run drew the loader's base seed at the epoch start
    iterator = iter(loader)
    torch.set_rng_state(rng)
    return enumerate(iterator, start=skip_batches)


def gradient_batches(task: Any, train_set: Dataset, global_batch: int, seed: int, rank: int, world: int,
                     field: str = "pruning.obert.grad_batch_size"):
    """``batches(step)`` for a data-driven criterion: this rank's share of ``global_batch``-sample batches,
    from a shuffle of its own seeded by the recipe step, so any world size and any resume see the same samples."""
    if global_batch % world or global_batch // world > len(train_set) // world:
        raise ConfigError(field, f"{global_batch} is not a multiple of the {world} process(es) or exceeds the "
                          f"training set ({len(train_set)} examples)", "pick a smaller multiple of the world size")
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=global_batch // world, sampler=sampler, drop_last=True,
                        collate_fn=task.collate_fn)

    def batches(step: int) -> Iterator[Any]:
        cycle = 0
        while True:
            sampler.set_epoch(step * 1000 + cycle)
            yield from loader
            cycle += 1

    return batches


__all__ = ["ShardSampler", "Loaders", "build_loaders", "epoch_batches", "gradient_batches"]
