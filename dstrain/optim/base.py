"""What the masked optimizers share: where masks come from and which backend runs."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from dstrain.optim.cpu_step import CpuPlan
from dstrain.optim.prepared_state import GRAD, StateSnapshot, StepCounters, same_objects
from dstrain.optim.triton_step import GroupPlan

MaskSource = Callable[[Tensor], Optional[Tensor]]
"""Maps a parameter (the tensor the optimizer updates) to its bool mask, or None if dense."""

BACKENDS = ("auto", "torch", "triton", "cpu")
"""torch: the exact reference (functional.py); triton: fused GPU kernels; cpu: fused C++ kernel (cpu_kernels.py)."""


def _no_masks(_: Tensor) -> Optional[Tensor]:
    return None


def _drop_plans(optimizer) -> None:
    """load_state_dict post-hook (a module function, so the optimizer stays picklable)."""
    optimizer._plans.clear()
    optimizer._cpu_plans.clear()
    optimizer._backends.clear()


class MaskedOptimizerMixin:
    """Mask bookkeeping for torch.optim.Optimizer subclasses.

    Masks are looked up per step through a callable rather than stored in the
    optimizer state so that one source of truth (the :class:`~dstrain.sparsity.registry.MaskRegistry`,
    or its ZeRO partition view) serves both the model and the optimizer, and so the
    optimizer's ``state_dict`` stays loadable by plain torch.
    """

    mask_source: MaskSource
    masking_enabled: bool

    def _init_masking(self, backend: str, mask_source: Optional[MaskSource]) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}; use 'auto' (fused kernels where they run), "
                             "'torch' (the exact reference), 'triton' (CUDA) or 'cpu' (CPU)")
        self.backend = backend
        self.mask_source = mask_source or _no_masks
        self.masking_enabled = True
        self._plans: Dict[int, Any] = {}  # param group index -> triton_step.GroupPlan
        self._cpu_plans: Dict[int, Any] = {}  # param group index -> cpu_step.CpuPlan
        self._backends: Dict[int, Tuple[List[Tensor], str]] = {}  # param group index -> (its params, backend)
        self.register_load_state_dict_post_hook(_drop_plans)  # the state tensors were replaced

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # torch pickles defaults, state and param_groups only
        self._plans = {}
        self._cpu_plans = {}
        self._backends = {}

    def _group_backend(self, index: int, group: dict) -> str:
        """The backend that steps ``group``: decided once for its tensors (:meth:`resolve_backend`), then cached.

        A group whose tensors change (another list, another mask source, a loaded state)
        is decided afresh.
        """
        params = group["params"]
        cached = self._backends.get(index)
        if cached is not None and same_objects(cached[0], params):
            return cached[1]
        backend = self.resolve_backend(list(params))
        self._backends[index] = (list(params), backend)
        return backend

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every param group, each on the backend decided for it (:meth:`_group_backend`)."""
        loss = self._closure_loss(closure)
        for index, group in enumerate(self.param_groups):
            backend = self._group_backend(index, group)
            if backend == "triton":
                self._triton_step(index, group)
            elif not (backend == "cpu" and self._cpu_step(index, group)):
                self._plain_step(group, backend)
        return loss

    def _plain_step(self, group: dict, backend: str) -> None:
        """The step without a prepared plan: the PyTorch reference (``torch``) or the unplanned C++ kernel (``cpu``)."""
        raise NotImplementedError

    @staticmethod
    def _closure_loss(closure) -> Optional[Tensor]:
        """torch.optim's closure protocol: re-evaluate the loss with grad enabled."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    @torch.no_grad()
    def reset_momentum(self) -> None:
        """Zero first-moment state (SGD momentum, Adam exp_avg); second moments are kept."""
        for state in self.state.values():
            for key in ("momentum_buffer", "exp_avg"):
                if torch.is_tensor(state.get(key)):
                    state[key].zero_()

    def set_mask_source(self, mask_source: MaskSource) -> None:
        self.mask_source = mask_source
        _drop_plans(self)

    # --- the Triton path -----------------------------------------------------------
    def _flags_key(self, group: dict) -> tuple:
        """Hyperparameters that select a kernel variant: a change rebuilds the group's plan."""
        raise NotImplementedError

    def _build_plan(self, group: dict, params: List[Tensor], grads: List[Tensor],
                    masks: List[Optional[Tensor]]) -> Any:
        """Check the tensors, create missing state, and return the kernel plan (kernels.*Plan)."""
        raise NotImplementedError

    def _run_plan(self, plan: Any, group: dict) -> None:
        raise NotImplementedError

    def _prepared_state(self, group: dict, params: List[Tensor]) -> Tuple[Optional[StepCounters], StateSnapshot]:
        """The step counters (AdamW) and the state tensors a prepared step holds for ``params``."""
        raise NotImplementedError

    def _triton_step(self, index: int, group: dict) -> None:
        """Step ``group`` (whose backend is Triton) with the fused kernels through its cached plan.

        The host work is the cheap check of :mod:`dstrain.optim.triton_step` while the
        group's plan still fits; the plan is (re)built, with every argument check, only
        when it does not.
        """
        params = group["params"]
        grads = list(map(GRAD, params))
        masks = list(map(self.mask_source, params)) if self.masking_enabled else None
        flags_key = self._flags_key(group)
        plan = self._plans.get(index)
        if plan is not None and plan.group is group and plan.matches(params, grads, masks, flags_key):
            self._run_plan(plan, group)
            return
        self._plans.pop(index, None)
        present = [i for i, g in enumerate(grads) if g is not None]
        stepped = [params[i] for i in present]
        if not stepped:
            return
        step_grads = [grads[i] for i in present]
        step_masks = [None] * len(stepped) if masks is None else [masks[i] for i in present]
        kernel_plan = self._build_plan(group, stepped, step_grads, step_masks)
        plan = GroupPlan(group, list(params), masks, present, step_grads, kernel_plan, flags_key)
        plan.counters, plan.snapshot = self._prepared_state(group, stepped)
        self._plans[index] = plan
        self._run_plan(plan, group)

    # --- the C++ CPU path ----------------------------------------------------------
    def _state_ready(self, group: dict, params: List[Tensor]) -> bool:
        """True once every stepped tensor has the state a prepared step reads (the first step creates it)."""
        raise NotImplementedError

    def _run_cpu_plan(self, plan: Any, group: dict, grads: List[Tensor]) -> None:
        raise NotImplementedError

    def _cpu_step(self, index: int, group: dict) -> bool:
        """Step ``group`` (whose backend is the C++ kernel) through a cached :class:`~.cpu_step.CpuPlan`;
        False until the first step has created the state (the caller then takes the unplanned C++ step).

        Why a plan: the plain path does per-parameter Python each step (state lookups, a
        new step tensor and an ``.item()`` per parameter, mask storages), host work that
        grows with the tensor count and with machine load (figures: docs/kernels.md).  The
        plan keeps the CPU step's host work as small as the Triton path's.  It is built from the second step on (the first
        creates the state) and rebuilt whenever the tensors, masks or state it holds change.
        """
        params = group["params"]

        grads = list(map(GRAD, params))
        masks = list(map(self.mask_source, params)) if self.masking_enabled else None
        flags_key = self._flags_key(group)
        plan = self._cpu_plans.get(index)
        stepped_grads = plan.planned_grads(params, grads, masks, flags_key) if plan is not None else None
        if stepped_grads is None:
            self._cpu_plans.pop(index, None)
            present = [i for i, g in enumerate(grads) if g is not None]
            stepped = [params[i] for i in present]
            if not stepped or not self._state_ready(group, stepped):
                return False
            counters, snapshot = self._prepared_state(group, stepped)
            plan = CpuPlan(params, masks, present, counters, snapshot, flags_key)
            self._cpu_plans[index] = plan
            stepped_grads = [grads[i] for i in present]
        self._run_cpu_plan(plan, group, stepped_grads)
        return True

    def masks_for(self, params: Iterable[Tensor]) -> List[Optional[Tensor]]:
        if not self.masking_enabled:
            return [None for _ in params]
        return [self.mask_source(p) for p in params]

    def resolve_backend(self, params: List[Tensor]) -> str:
        """'auto' picks the fused kernels where they run, else the PyTorch reference.

        Triton for contiguous CUDA tensors.  Channels-last conv weights are dense but
        not contiguous; the Triton kernels address tensors as flat arrays, so 'auto'
        keeps those on the PyTorch path (under ZeRO the optimizer only sees flat
        partitions, which always qualify).

        The C++ kernel (:mod:`.cpu_kernels`) for fp32 CPU parameters: its step is
        bitwise the reference's for SGD and for AdamW's moments, and within the same
        1-2 ulp as the Triton kernels for AdamW's parameters (a correctly rounded sqrt
        where torch's MKL sqrt is not), at the speed of torch's dense fused step
        instead of 5-7x slower.  It handles channels-last tensors itself.  If it cannot
        be built (no compiler) 'auto' falls back to 'torch' after one warning;
        ``backend='torch'`` always means the exact reference.
        """
        if self.backend != "auto":
            return self.backend
        if not params:
            return "torch"
        if params[0].is_cuda:
            if all(p.is_contiguous() for p in params):
                from dstrain.kernels import triton_available

                if triton_available():
                    return "triton"
            return "torch"
        if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params):
            from dstrain.optim import cpu_kernels

            if cpu_kernels.available():
                return "cpu"
        return "torch"
