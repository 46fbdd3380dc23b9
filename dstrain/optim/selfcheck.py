"""Check the fused Triton steps against the PyTorch reference on the machine at hand.

Why: CI runs the kernels only under the Triton interpreter.  Whether a GPU install
gives the same numbers (driver, Triton release, autotuning on scratch copies, the
int64 -> pointer cast, the aligned and unaligned variants) can only be checked where
it runs.  ``dstrain selfcheck`` does that in a few seconds on a CUDA
device (or, with ``TRITON_INTERPRET=1``, on the CPU with small shapes).

Exit status: 0 every case agrees; 1 a case disagrees beyond fp32 rounding or leaves a
pruned entry non-zero (the kernels are wrong here); 3 the check cannot run here (no CUDA
GPU and no TRITON_INTERPRET=1), which says nothing about the kernels.

Every case runs several steps from identical starting tensors through
``dstrain.kernels.fused_masked_*`` and through :mod:`dstrain.optim.functional`, covering fp32
and bf16 gradients, byte/bit/absent masks, all-pruned tensors, tensors that span
several chunks, and views at odd offsets into one flat buffer (DeepSpeed's layout).
The first step of each case is also the autotuner's first sight of that size, so a
tuner that applied the in-place step more than once would show up as a mismatch.

``--quick`` runs 18 optimizer cases instead of 40 (plus the select case), chosen so that every compiled variant of
both kernels (gradient dtype x byte/bit/no mask x aligned/unaligned) is launched at
least once, which the run checks from the launches themselves; and it compiles one
block configuration per variant instead of autotuning eight (``DSTRAIN_AUTOTUNE=0``).
On a fresh GPU machine compilation dominates, so this is the check that fits a
short lease; the full run is for a longer one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from dstrain.optim.functional import masked_adamw, masked_sgd

SGD_HYPER = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
ADAMW_HYPER = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
RTOL, ATOL = 1e-5, 1e-6
"""Agreement required: fp32 rounding over a few steps (AdamW's sqrt/division order differs by backend)."""


@dataclass
class CaseResult:
    name: str
    max_abs_diff: float
    bitwise: bool
    pruned_nonzero: int
    ok: bool
    note: str = ""
    """Printed instead of the difference, for results that are not comparisons."""


EXIT_OK, EXIT_MISMATCH, EXIT_CANNOT_RUN = 0, 1, 3


def _device() -> Optional[torch.device]:
    """The device to check on, or None where the kernels cannot run at all."""
    import dstrain.kernels._runtime as runtime

    if runtime.INTERPRET:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        return None
    return torch.device("cuda")


def _shapes(device: torch.device) -> List[Tuple[int, ...]]:
    """Odd sizes, empty, size 1, and (on a GPU) tensors spanning several 32K-element chunks."""
    small = [(7, 3), (1,), (0,), (17, 33), (4, 3, 3, 3), (300,)]
    if device.type == "cuda":
        return small + [(300, 257), (70001,), (64, 64, 3, 3)]
    return small


def flat_views(shapes: Sequence[Tuple[int, ...]], device: torch.device, gen: torch.Generator) -> List[Tensor]:
    """Tensors back to back in one buffer from element 1 on, so most start off a 16-byte boundary."""
    sizes = [math.prod(s) for s in shapes]
    flat = torch.randn(1 + sum(sizes), generator=gen).to(device)
    views, offset = [], 1
    for s, n in zip(shapes, sizes):
        views.append(flat[offset: offset + n].view(s))
        offset += n
    return views


def _masks(shapes, fmt: str, gen: torch.Generator, device: torch.device) -> Tuple[list, list]:
    """(reference bool masks, the same masks in ``fmt`` for the kernel); first tensor all pruned."""
    from dstrain.kernels import pack_mask

    if fmt == "none":
        return [None] * len(shapes), [None] * len(shapes)
    ref = []
    for i, s in enumerate(shapes):
        m = (torch.rand(s, generator=gen) > 0.6).to(device)
        ref.append(torch.zeros_like(m) if i == 0 else (None if fmt == "mixed" and i % 3 == 1 else m))
    convert = {"bool": lambda m: m, "mixed": lambda m: m, "uint8": lambda m: m.to(torch.uint8), "bit": pack_mask}[fmt]
    return ref, [None if m is None else convert(m) for m in ref]


def _compare(name: str, got: Sequence[Optional[Tensor]], want: Sequence[Optional[Tensor]],
             masks: Sequence[Optional[Tensor]]) -> CaseResult:
    max_diff, bitwise, pruned_nonzero, close = 0.0, True, 0, True
    for g, w, m in zip(got, want, masks):
        if g is None or g.numel() == 0:
            continue
        diff = (g - w).abs()
        max_diff = max(max_diff, float(diff.max()))
        bitwise &= bool(torch.equal(g, w))
        close &= bool(torch.allclose(g, w, rtol=RTOL, atol=ATOL))
        if m is not None:
            pruned_nonzero += int((g[~m] != 0).sum())
    return CaseResult(name, max_diff, bitwise, pruned_nonzero, close and pruned_nonzero == 0)


def _run_sgd(params, ref_params, grads_per_step, kmasks, masks) -> Tuple[list, list]:
    from dstrain import kernels

    bufs: List[Optional[Tensor]] = [None] * len(params)
    ref_bufs: List[Optional[Tensor]] = [None] * len(params)
    for grads in grads_per_step:
        kernels.fused_masked_sgd(params, grads, bufs, kmasks, **SGD_HYPER)
        masked_sgd(ref_params, grads, ref_bufs, masks, **SGD_HYPER)
    return list(params) + bufs, list(ref_params) + ref_bufs


def _run_adamw(params, ref_params, grads_per_step, kmasks, masks) -> Tuple[list, list]:
    from dstrain import kernels

    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    rm, rv = [t.clone() for t in m], [t.clone() for t in v]
    for step, grads in enumerate(grads_per_step, start=1):
        kernels.fused_masked_adamw(params, grads, m, v, [step] * len(params), kmasks, **ADAMW_HYPER)
        masked_adamw(ref_params, grads, rm, rv, [step] * len(params), masks, **ADAMW_HYPER)
    return list(params) + m + v, list(ref_params) + rm + rv


OPTIMIZERS: dict = {"sgd": _run_sgd, "adamw": _run_adamw}


def run_optimizer_case(optimizer: str, grad_dtype: torch.dtype, fmt: str, layout: str, device: torch.device,
                       steps: int = 3, seed: int = 0) -> CaseResult:
    """One case: ``steps`` fused vs reference steps from identical tensors."""
    gen = torch.Generator().manual_seed(seed)
    shapes = _shapes(device)
    if layout == "flat":
        params = flat_views(shapes, device, gen)
    else:
        params = [torch.randn(s, generator=gen).to(device) for s in shapes]
    ref_params = [p.clone() for p in params]
    masks, kmasks = _masks(shapes, fmt, gen, device)
    grads_per_step = [[torch.randn(s, generator=gen).to(device, grad_dtype) for s in shapes] for _ in range(steps)]
    got, want = OPTIMIZERS[optimizer](params, ref_params, grads_per_step, kmasks, masks)
    name = f"{optimizer} {str(grad_dtype).replace('torch.', '')} grads, {fmt} masks, {layout}"
    n_roles = len(got) // len(shapes)
    return _compare(name, got, want, list(masks) * n_roles)


def run_select_case(device: torch.device, seed: int = 0) -> CaseResult:
    """Radix-select threshold vs ``torch.kthvalue`` over the concatenated magnitudes (must be exact)."""
    from dstrain.kernels import kth_smallest_abs_triton

    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randint(-6, 7, (37,), generator=gen).float() * 0.25, torch.zeros(3)]
    tensors += [torch.randn(s, generator=gen) for s in _shapes(device)]
    tensors = [t.to(device) for t in tensors] + flat_views([(129,), (1000,)], device, gen)
    flat = torch.cat([t.reshape(-1).abs().float() for t in tensors])
    ks = [1, flat.numel() // 2, int(0.9 * flat.numel()), flat.numel()]
    worst, exact = 0.0, True
    for k in ks:
        got, want = kth_smallest_abs_triton(tensors, k), float(torch.kthvalue(flat.cpu(), k).values)
        exact &= got == want
        worst = max(worst, abs(got - want))
    return CaseResult("radix select vs kthvalue", worst, exact, 0, exact)


GRAD_DTYPES = (torch.float32, torch.bfloat16)


def full_cases() -> List[Tuple[str, torch.dtype, str, str]]:
    """(optimizer, grad dtype, mask format, layout): the whole cross product (40 cases)."""
    return [(o, g, f, lay) for o in OPTIMIZERS for g in GRAD_DTYPES
            for f in ("bool", "uint8", "bit", "mixed", "none") for lay in ("fresh", "flat")]


def quick_cases() -> List[Tuple[str, torch.dtype, str, str]]:
    """18 cases that launch every kernel variant: 'mixed' masks give byte-masked and dense
    groups, 'flat' views give unaligned groups (and aligned ones where an offset happens to
    be a multiple of 16 bytes), 'fresh' tensors aligned ones; one uint8 case per optimizer
    checks that byte masks of either dtype reach the same variant."""
    cases = []
    for o in OPTIMIZERS:
        for g in GRAD_DTYPES:
            cases += [(o, g, f, lay) for f in ("mixed", "bit") for lay in ("fresh", "flat")]
        cases.append((o, torch.float32, "uint8", "flat"))
    return cases


def expected_variants() -> set:
    """(kernel, GRAD_KIND, MASK_KIND, ALIGNED) for every compiled variant the optimizers use."""
    from dstrain.kernels._tl import GRAD_KINDS

    return {(o, GRAD_KINDS[g], m, a) for o in OPTIMIZERS for g in GRAD_DTYPES for m in (0, 1, 2) for a in (True, False)}


def _variant(kwargs: dict) -> tuple:
    kernel = "sgd" if "HAS_MOMENTUM" in kwargs else "adamw"
    return (kernel, kwargs["GRAD_KIND"], kwargs["MASK_KIND"], kwargs["ALIGNED"])


def run_all(device: torch.device, report: Callable[[CaseResult], None] = lambda r: None,
            quick: bool = False) -> List[CaseResult]:
    """Every case (or the quick set), then the radix select; with ``quick``, a last result
    says whether every kernel variant was launched."""
    from dstrain.kernels import _runtime

    results = []
    with _runtime.logged_launches() as launches:
        for case in (quick_cases() if quick else full_cases()):
            results.append(run_optimizer_case(*case, device))
            report(results[-1])
    results.append(run_select_case(device))
    report(results[-1])
    if quick:
        missing = expected_variants() - {_variant(kw) for kw in launches}
        name = f"{len(expected_variants()) - len(missing)}/{len(expected_variants())} (kernel, grad kind, mask kind, aligned)"
        if missing:
            name += f"; never launched: {sorted(missing)}"
        results.append(CaseResult("variants launched", 0.0, False, 0, not missing, note=name))
        report(results[-1])
    return results


def print_result(r: CaseResult) -> None:
    status = "ok  " if r.ok else "FAIL"
    if r.note:
        print(f"{status} {r.name:<48} {r.note}", flush=True)
        return
    extra = f", {r.pruned_nonzero} pruned entries non-zero" if r.pruned_nonzero else ""
    print(f"{status} {r.name:<48} max |diff| {r.max_abs_diff:.3g}{' (bitwise)' if r.bitwise else ''}{extra}",
          flush=True)
