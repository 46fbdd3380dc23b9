"""torch.distributed set-up that works the same under `python`, `torchrun` and `deepspeed`."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, List

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
    set_rank_threads()
    announce_cpu_comm_build()
    import deepspeed

    deepspeed.init_distributed(verbose=False)


def set_rank_threads() -> None:
    """One share of the cores per local rank when OMP_NUM_THREADS is not given.

    torchrun sets OMP_NUM_THREADS=1 for multi-process runs; the ``deepspeed`` launcher
    sets nothing, so 2 ranks x 2 threads fought over 2 cores (344 vs 1301 samples/s
    under torchrun, measured on digits).  cores // local ranks (at least 1) makes the
    two launchers train alike.  An explicit OMP_NUM_THREADS always wins.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    # torchrun sets LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE")
                      or os.environ.get("WORLD_SIZE", "1"))
    threads = max(1, (os.cpu_count() or 1) // max(1, local_world))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def announce_cpu_comm_build() -> None:
    """Keep DeepSpeed's CPU communication op in a per-venv cache, and say so before compiling it.

    On CPU, DeepSpeed's TorchBackend JIT-compiles a shared-memory op at the first
    ``init_distributed`` (it has no switch to skip it, even for one process); that takes
    1-3 minutes in silence.  The default cache (~/.cache/torch_extensions) is shared by
    every venv, so two venvs with different torch builds rebuild it in turn:
    TORCH_EXTENSIONS_DIR defaults here to ``<venv>/torch_extensions`` instead.
    """
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    try:
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != "cpu":
            return
        from torch.utils.cpp_extension import _get_build_directory

        build_dir = Path(_get_build_directory("deepspeed_shm_comm", verbose=False))
    except Exception:  # a private torch helper: never stop a run over a message
        return
    if not any(build_dir.glob("*.so")) and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"[dstrain] compiling DeepSpeed's CPU communication op once, ~1-3 min "
              f"(cached in {build_dir.parent})", flush=True)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized() and world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave torch.distributed cleanly at the end of a successful run: a barrier, then destroy the group.

    Why: a process that exits with its gloo process group alive tears the group's
    background threads down during interpreter exit, in whatever order; one clean-clone CI
    run saw rank 1 abort there ("terminate called without an active exception", SIGABRT)
    after training had finished.  torch also asks for ``destroy_process_group`` before exit.
    The barrier keeps one rank from destroying the group while another still reads from it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def on_main_or_raise(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only; every rank gets its result, or raises the ConfigError it raised.

    Why: a check that only rank 0 can make (a lock, a folder scan) must stop every rank, or
    the others wait for rank 0 in the next collective until the timeout.
    """
    from dstrain.errors import ConfigError

    outcome: Any = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except ConfigError as err:
            outcome = ("error", err.field, err.problem, err.fix)  # plain tuple: pickles across ranks
    outcome = all_gather_objects(outcome)[0]
    if outcome[0] == "error":
        raise ConfigError(*outcome[1:])
    return outcome[1]


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
