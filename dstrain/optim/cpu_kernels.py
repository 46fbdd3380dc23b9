"""Fused masked SGD/AdamW for CPU tensors: a C++ kernel built on first use (``backend="cpu"``).

Why C++ and not the reference or ``torch.compile``: the reference
(:mod:`dstrain.optim.functional`) runs ~10 tensor ops per parameter, each a full
pass over memory, and zeroes pruned entries in extra passes; on the CPU that made
the masked step 5-7x slower than torch's own dense fused step.  One pass that reads
parameter, gradient, state and mask once and writes parameter and state once runs at
the speed of the dense fused step (docs/kernels.md).  A ``torch.compile``d flat
masked AdamW took about twice the time of torch's dense fused AdamW on the ResNet50 set
(docs/kernels.md), and inductor compiles per shape set, so the kernel is C++.

The source, ``csrc/masked_step_cpu.cpp``, is compiled with ``torch.utils.cpp_extension``
(ninja + the system C++ compiler) for torch's own CPU capability (AVX2, AVX512 or
none), with ``-ffp-contract=off`` so that every element goes through exactly the fp32
operations torch's CPU kernels apply in the reference, with FMAs only where those
kernels use one.  SGD is bitwise equal to the reference, and so are AdamW's moments.
AdamW's parameter uses a correctly rounded sqrt where torch's CPU sqrt is MKL's (off
by an ulp for ~15% of inputs): it is bitwise equal to the reference with that one op
replaced, and within the same 1-2 ulp of the reference as the Triton kernels
(tests/test_optim_cpu_kernels.py).  Calling MKL's sqrt from the kernel made it bitwise but
2.1x slower than torch's dense fused AdamW (ResNet50 set, 1 thread), which does not
use MKL's sqrt either.

The build takes ~10 s of CPU time once; it is cached per virtual environment
(``<venv>/torch_extensions``) or in ``TORCH_EXTENSIONS_DIR`` when that is set, and
torch rebuilds it when the source or flags change (later loads: ~0.2 s).  Without a
compiler the build fails once, a one-line warning says so, and the optimizers fall
back to the reference.  Threads: torch's intra-op pool (``at::parallel_for``, i.e.
``torch.set_num_threads``; the build needs ``-fopenmp`` for that, see ``_COMMON_FLAGS``), one
parallel region per step over 64K-element work items.

Same contracts as the reference and as :mod:`dstrain.kernels` (bool/uint8 masks or packed
:class:`~dstrain.kernels.bitmask.BitMask`, fp32 params with fp32/bf16/fp16 grads, pruned
entries written as +0.0 in the parameter and every state buffer).  Tensors laid out
so that flat addressing would be wrong (a parameter that is not dense, a gradient or
state with other strides than its parameter, a bit mask on a non-contiguous
parameter) are updated by the reference instead.  Non-fp32 parameters and tensors on
another device are refused with a ValueError that names the fix (``backend='auto'``
never sends them here).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from dstrain.kernels.adamw_scalars import adamw_scalars_per_tensor
from dstrain.optim.functional import masked_adamw, masked_sgd

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "masked_step_cpu.cpp"
# -fopenmp: at::parallel_for is a header template whose "#pragma omp parallel" a build without
# it ignores, so the step ran on one thread whatever torch.set_num_threads said (measured: the
# same 9.5 ms on 1 and 2 threads for the ResNet50 SGD set while torch's fused step went 9.6 -> 5.5).
_COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
# Per torch CPU capability: the ISA flags torch builds that capability's kernels with,
# and whether its vectorised fmadd is a true FMA (it is a multiply then an add without).
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
               "-mprefer-vector-width=512", "-DDSTRAIN_HAS_FMA"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DDSTRAIN_HAS_FMA"],
}

_lock = threading.Lock()
_ops = None  # torch.ops.dstrain_cpu once loaded; False once the build failed
build_seconds: Optional[float] = None
"""Seconds the last load took in this process (compile, or just the cache check and dlopen)."""


def _capability() -> str:
    cap = torch.backends.cpu.get_cpu_capability()
    return cap if cap in _ISA_FLAGS else "DEFAULT"


def _flags() -> List[str]:
    return _COMMON_FLAGS + _ISA_FLAGS.get(_capability(), [])


def extension_name() -> str:
    """One build per torch version and CPU capability (torch hashes source and flags on top)."""
    version = re.sub(r"[^0-9A-Za-z]", "_", torch.__version__)
    return f"dstrain_masked_step_{_capability().lower()}_torch{version}"


def build_directory() -> Optional[Path]:
    """``TORCH_EXTENSIONS_DIR`` if set (torch's own rule), else inside the venv, else torch's user cache."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return None
    if sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK):
        path = Path(sys.prefix) / "torch_extensions" / extension_name()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return None


def _load():
    global _ops, build_seconds
    with _lock:
        if _ops is not None:
            return _ops
        t0 = time.perf_counter()
        try:
            compiler = os.environ.get("CXX", "c++")
            if shutil.which(compiler) is None:
                raise RuntimeError(f"no C++ compiler {compiler!r} on PATH")
            from torch.utils.cpp_extension import load

            build_dir = build_directory()
            load(name=extension_name(), sources=[str(SOURCE)], extra_cflags=_flags(), extra_ldflags=_LDFLAGS,
                 build_directory=None if build_dir is None else str(build_dir), is_python_module=False,
                 verbose=False)
            _ops = torch.ops.dstrain_cpu
            build_seconds = time.perf_counter() - t0
            log.info("dstrain CPU optimizer kernels loaded in %.1f s", build_seconds)
        except Exception as e:  # no compiler, no ninja, headers missing: the reference still works
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            warnings.warn(f"dstrain: the fused CPU optimizer step could not be built ({reason}); "
                          "using the PyTorch reference (backend='torch') instead", RuntimeWarning, stacklevel=3)
            _ops = False
        return _ops


def available() -> bool:
    """Build (first call in a venv) or load the kernels; False, after one warning, if that fails."""
    return bool(_ops) if _ops is not None else bool(_load())


def _mask_tensors(masks: Sequence) -> List[Optional[Tensor]]:
    from dstrain.kernels.bitmask import mask_storage

    return [mask_storage(m) for m in masks]


def _bool_mask(mask) -> Optional[Tensor]:
    """The reference takes bool masks: unpack a BitMask, view uint8 as bool."""
    from dstrain.kernels.bitmask import BitMask, unpack_mask

    if mask is None:
        return None
    if isinstance(mask, BitMask):
        return unpack_mask(mask)
    return mask if mask.dtype == torch.bool else mask != 0


def fused_masked_sgd_cpu(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: List[Optional[Tensor]],
    masks: Sequence,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> None:
    """:func:`~dstrain.optim.functional.masked_sgd` in one fused pass (the reference if the build failed).

    ``None`` entries of ``momentum_buffers`` are allocated (laid out like their
    parameter) and written into the list.  Raises ValueError, before anything is
    written, for dtype/shape/device mismatches.
    """
    ops = _ops if _ops else _load()
    if not ops:
        masked_sgd(params, grads, momentum_buffers, [_bool_mask(m) for m in masks], lr=lr, momentum=momentum,
                   dampening=dampening, nesterov=nesterov, weight_decay=weight_decay, maximize=maximize)
        return
    has_momentum = momentum != 0
    first = [has_momentum and b is None for b in momentum_buffers] if has_momentum else []
    if has_momentum:
        for i, p in enumerate(params):
            if first[i] and isinstance(p, Tensor):
                momentum_buffers[i] = torch.empty_like(p, memory_format=torch.preserve_format)
    try:
        sgd_with_storages(list(params), list(grads), momentum_buffers, masks, _mask_tensors(masks), first, lr=lr,
                          momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                          maximize=maximize)
    except Exception:
        for i, f in enumerate(first):  # refused before anything was written: leave the list as it was
            if f:
                momentum_buffers[i] = None
        raise


def sgd_with_storages(params: Sequence[Tensor], grads: Sequence[Tensor], momentum_buffers: List[Optional[Tensor]],
                      masks: Sequence, mask_storages: Sequence[Optional[Tensor]], first: Sequence[bool], *,
                      lr: float, momentum: float, dampening: float, nesterov: bool, weight_decay: float,
                      maximize: bool) -> None:
    """The kernel call itself, for a prepared step (:class:`~.cpu_step.CpuPlan`) that keeps the mask storages.

    ``first[i]``: ``momentum_buffers[i]`` is freshly allocated and gets ``buf = grad``.
    Tensors the kernel cannot address flatly are stepped by the reference.
    """
    has_momentum = momentum != 0
    skipped = _ops.masked_sgd(params, grads, momentum_buffers if has_momentum else [], mask_storages, first, lr,
                              momentum, dampening, bool(nesterov), weight_decay, bool(maximize))
    if skipped:
        bufs = [None if has_momentum and first[i] else momentum_buffers[i] for i in skipped]
        masked_sgd([params[i] for i in skipped], [grads[i] for i in skipped], bufs,
                   [_bool_mask(masks[i]) for i in skipped], lr=lr, momentum=momentum, dampening=dampening,
                   nesterov=nesterov, weight_decay=weight_decay, maximize=maximize)
        for i, b in zip(skipped, bufs):
            momentum_buffers[i] = b


def fused_masked_adamw_cpu(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    masks: Sequence,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool = False,
) -> None:
    """:func:`~dstrain.optim.functional.masked_adamw` in one fused pass (the reference if the build failed).

    ``steps[i]`` counts this step (>= 1).  Raises ValueError, before anything is
    written, for dtype/shape/device mismatches or a step < 1.
    """
    ops = _ops if _ops else _load()
    if not ops:
        masked_adamw(params, grads, exp_avgs, exp_avg_sqs, steps, [_bool_mask(m) for m in masks], lr=lr,
                     beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize)
        return
    neg_ss, bc2 = adamw_scalars_per_tensor(lr, beta1, beta2, steps)
    adamw_with_storages(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), steps, masks,
                        _mask_tensors(masks), neg_ss, bc2,
                        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize)


def adamw_with_storages(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
                        exp_avg_sqs: Sequence[Tensor], steps: Sequence[int], masks: Sequence,
                        mask_storages: Sequence[Optional[Tensor]], neg_step_sizes: Sequence[float],
                        bc2_sqrts: Sequence[float], *, lr: float, beta1: float, beta2: float, eps: float,
                        weight_decay: float, maximize: bool) -> None:
    """The kernel call itself, for a prepared step that keeps the mask storages and computes the scalars once.

    Tensors the kernel cannot address flatly are stepped by the reference.
    """
    skipped = _ops.masked_adamw(params, grads, exp_avgs, exp_avg_sqs, mask_storages, neg_step_sizes, bc2_sqrts,
                                lr, beta1, beta2, eps, weight_decay, bool(maximize))
    if skipped:
        masked_adamw([params[i] for i in skipped], [grads[i] for i in skipped], [exp_avgs[i] for i in skipped],
                     [exp_avg_sqs[i] for i in skipped], [steps[i] for i in skipped],
                     [_bool_mask(masks[i]) for i in skipped], lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                     weight_decay=weight_decay, maximize=maximize)
