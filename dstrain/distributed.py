"""torch.distributed set-up that works the same under `python`, `torchrun` and `deepspeed`."""
from __future__ import annotations

import os
import socket
from typing import Any, List

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Initialise the process group once; a plain `python` run becomes a world of one.

    DeepSpeed picks gloo on CPU (DS_ACCELERATOR=cpu) and NCCL on CUDA.
    """
    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    import deepspeed

    deepspeed.init_distributed(verbose=False)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized() and world_size() > 1:
        dist.barrier()


def all_gather_objects(obj: Any) -> List[Any]:
    if not dist.is_initialized() or world_size() == 1:
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name(int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running stats) over ranks.

    DeepSpeed, unlike DDP, does not broadcast buffers, so each rank's running
    statistics drift apart; evaluating or saving then depends on the rank.  One
    all-reduce per evaluation/checkpoint makes them agree.
    """
    if not dist.is_initialized() or world_size() == 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()
