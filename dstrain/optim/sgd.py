"""MaskedSGD: torch.optim.SGD semantics with pruned weights held at exactly zero."""
from __future__ import annotations

from typing import Optional

from torch.optim import Optimizer

from dstrain.optim.base import MaskedOptimizerMixin, MaskSource
from dstrain.optim.functional import masked_sgd
from dstrain.optim.prepared_state import StateSnapshot


class MaskedSGD(MaskedOptimizerMixin, Optimizer):
    """SGD with momentum/Nesterov/weight decay whose step zeroes pruned weights and their momentum.

    With no masks (dense phase, or ``masking_enabled = False``) it matches
    ``torch.optim.SGD(foreach=False)`` bit for bit.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        *,
        backend: str = "auto",
        mask_source: Optional[MaskSource] = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"lr={lr}: learning rate must be >= 0")
        if momentum < 0.0:
            raise ValueError(f"momentum={momentum}: must be >= 0")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay={weight_decay}: must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)
        self._init_masking(backend, mask_source)

    def _plain_step(self, group: dict, backend: str) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        bufs = [self.state[p].get("momentum_buffer") for p in params]
        hyper = dict(lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                     nesterov=group["nesterov"], weight_decay=group["weight_decay"], maximize=group["maximize"])
        if backend == "cpu":
            from dstrain.optim.cpu_kernels import fused_masked_sgd_cpu

            fused_masked_sgd_cpu(params, grads, bufs, self.masks_for(params), **hyper)
        else:
            masked_sgd(params, grads, bufs, self.masks_for(params), **hyper)
        if group["momentum"] != 0:
            for p, buf in zip(params, bufs):
                self.state[p]["momentum_buffer"] = buf

    # --- the Triton path (see MaskedOptimizerMixin._triton_step) ---------------------
    def _flags_key(self, group: dict) -> tuple:
        return (group["momentum"] != 0, group["nesterov"], group["weight_decay"] != 0, group["maximize"])

    def _build_plan(self, group, params, grads, masks):
        from dstrain.kernels.masked_sgd import SGDPlan

        bufs = [self.state[p].get("momentum_buffer") for p in params]
        plan = SGDPlan(params, grads, bufs, masks, momentum=group["momentum"], nesterov=group["nesterov"],
                       weight_decay=group["weight_decay"], maximize=group["maximize"], use_cache=False)
        if group["momentum"] != 0:
            for p, buf in zip(params, bufs):
                self.state[p]["momentum_buffer"] = buf
        return plan

    def _run_plan(self, plan, group) -> None:
        plan.kernel_plan.run(lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                             weight_decay=group["weight_decay"])

    def _prepared_state(self, group, params):
        has_buffers = group["momentum"] != 0 and all("momentum_buffer" in self.state[p] for p in params)
        return None, StateSnapshot(self.state, params, ("momentum_buffer",) if has_buffers else ())

    # --- the C++ CPU path (see MaskedOptimizerMixin._cpu_step) -----------------------
    def _state_ready(self, group, params) -> bool:
        return group["momentum"] == 0 or all(self.state[p].get("momentum_buffer") is not None for p in params)

    def _run_cpu_plan(self, plan, group, grads) -> None:
        from dstrain.optim.cpu_kernels import sgd_with_storages

        bufs = plan.snapshot.tensors.get("momentum_buffer", [])  # the flags key rebuilds the plan if momentum appears
        sgd_with_storages(plan.stepped, grads, bufs, plan.stepped_masks, plan.mask_storages, plan.not_first,
                          lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"], nesterov=group["nesterov"],
                          weight_decay=group["weight_decay"], maximize=group["maximize"])
