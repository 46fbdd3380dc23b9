"""Where kernels run (compiled on a GPU, or under the Triton interpreter) and how they are sized.

Kept in one place because three things depend on the same decision:

* the block/chunk sizes (large and autotuned on a GPU; small and fixed under the
  interpreter, where every program runs as Python and small tensors in tests
  should still span several chunks and blocks),
* whether fused multiply-adds are emulated (the interpreter evaluates
  ``tl.fma`` as an unfused multiply then add, but torch's reference rounds
  ``add(alpha=)``, ``lerp`` and ``addcmul`` once, as an FMA),
* how autotuning is made safe for in-place optimizer kernels (see
  :func:`launch_tuned`).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, Hashable, Iterator, List, Optional, Set

import torch
import triton


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


INTERPRET: bool = _env_flag("TRITON_INTERPRET")
"""Read once at import: ``triton.jit`` also decides at decoration time whether to interpret."""

# Elements per work item of a multi-tensor launch.  A tensor larger than CHUNK is split
# into several work items, so one huge tensor does not serialise on one program and many
# small tensors each cost one program, not one launch.
GPU_CHUNK: int = 32768
INTERP_CHUNK: int = 256
INTERP_BLOCK: int = 64

AUTOTUNE: bool = os.environ.get("DSTRAIN_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")
"""``DSTRAIN_AUTOTUNE=0`` (read at import): one fixed config instead of eight.

For checks of correctness rather than speed (``selfcheck --quick``): every kernel
variant then compiles once instead of once per config, which turns minutes of
compilation on a fresh GPU machine into seconds.  The launch path is unchanged
(the autotuner still runs the scratch pre-launch; with one config it times nothing).
"""

GPU_BLOCK_CONFIGS: List[triton.Config] = [
    triton.Config({"BLOCK": b}, num_warps=w) for b in (512, 1024, 2048, 4096) for w in (4, 8)
] if AUTOTUNE else [triton.Config({"BLOCK": 1024}, num_warps=4)]


def chunk_size() -> int:
    return INTERP_CHUNK if INTERPRET else GPU_CHUNK


def jit_tuned(fn: Callable, key: List[str]):
    """``triton.jit`` plus ``triton.autotune`` over BLOCK/num_warps on a GPU; plain jit when interpreting.

    Under the interpreter the kernel gets ``BLOCK`` from the caller (``INTERP_BLOCK``);
    on a GPU the autotuner supplies it, so callers must not pass it (see ``block_kwargs``).
    """
    jitted = triton.jit(fn)
    if INTERPRET:
        return jitted
    return triton.autotune(configs=GPU_BLOCK_CONFIGS, key=key)(jitted)


def block_kwargs() -> Dict[str, object]:
    """Launch kwargs that differ between the interpreter and compiled runs.

    ``enable_fp_fusion=False`` stops the compiler from contracting a multiply and a
    following add into an FMA on its own: the kernels place every FMA explicitly
    (``tl.fma``) exactly where torch's reference rounds once, and nowhere else.
    The interpreter ignores the option.
    """
    if INTERPRET:
        return {"BLOCK": INTERP_BLOCK}
    return {"enable_fp_fusion": False}


def tune_bucket(total_elements: int) -> int:
    """Autotune key: the problem size rounded to a power of two, so each model size tunes once."""
    return max(int(total_elements), 1).bit_length()


_TUNED: Set[Hashable] = set()


def launch_tuned(key: Hashable, launch: Callable[[bool], None]) -> None:
    """Run ``launch(scratch=False)``, first running ``launch(scratch=True)`` if ``key`` is new.

    ``triton.autotune`` benchmarks a kernel by running it many times on the call's
    arguments.  The optimizer kernels update parameters *in place* through pointer
    tables, which ``restore_value`` cannot see, so benchmarking on the real tensors
    would apply the step dozens of times.  Instead, the first launch for an autotune
    key runs on scratch copies (``scratch=True``), which fills the autotuner's cache;
    the real launch then hits that cache and runs once.  ``key`` must determine the
    autotuner's own key (it includes the same tune bucket and constexpr kinds).
    """
    if not INTERPRET and _STUB is None and key not in _TUNED:
        launch(True)
        _TUNED.add(key)
    launch(False)


_STUB: Optional[List[tuple]] = None


def launch(kernel: Any, grid: tuple, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, or only recorded inside :func:`stubbed_launches`.

    Every optimizer launch goes through here so that the host side of a step (argument
    checks, tables, scalars) can be timed on its own, on any machine: the host cost is
    what caps a fast kernel at small step times, and it is the same with or without a GPU.
    """
    if _LOG is not None:
        _LOG.append(kwargs)
    if _STUB is not None:
        _STUB.append((kernel, grid, args, kwargs))
        return
    kernel[grid](*args, **kwargs)


_LOG: Optional[List[Dict[str, Any]]] = None


@contextlib.contextmanager
def logged_launches() -> Iterator[List[Dict[str, Any]]]:
    """Run launches as usual and yield the list of their keyword (compile-time) arguments.

    How ``selfcheck --quick`` proves it launched every kernel variant, not just every case.
    """
    global _LOG
    previous, _LOG = _LOG, []
    try:
        yield _LOG
    finally:
        _LOG = previous


@contextlib.contextmanager
def stubbed_launches() -> Iterator[List[tuple]]:
    """Record launches instead of running them; yields the list of ``(kernel, grid, args, kwargs)``.

    Inside, the fused optimizers accept CPU tensors without the interpreter (nothing is
    dereferenced) and skip the autotuning pre-run: what remains is exactly the host work
    of a step.  For measuring that (``benchmarks/test_bench_host.py``), never for training.
    """
    global _STUB
    previous, _STUB = _STUB, []
    try:
        yield _STUB
    finally:
        _STUB = previous


def stubbed() -> bool:
    return _STUB is not None


def check_device(t: torch.Tensor, name: str) -> None:
    """Compiled Triton needs CUDA tensors; the interpreter needs CPU tensors (it dereferences raw addresses)."""
    if INTERPRET and t.device.type != "cpu":
        raise ValueError(
            f"{name} is on {t.device}, but TRITON_INTERPRET=1 runs kernels on the CPU: the multi-tensor "
            "pointer tables hold raw addresses the interpreter reads from host memory. Move the tensors "
            "to the CPU or unset TRITON_INTERPRET."
        )
    if not INTERPRET and _STUB is None and t.device.type != "cuda":
        raise ValueError(
            f"{name} is on {t.device}; compiled Triton kernels need CUDA tensors. Use backend='torch' "
            "on the CPU (or set TRITON_INTERPRET=1 before importing kernels, for testing)."
        )
