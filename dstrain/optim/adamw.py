"""MaskedAdamW: torch.optim.AdamW semantics with pruned weights and moments held at zero."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.optim import Optimizer

from dstrain.optim.base import MaskedOptimizerMixin, MaskSource
from dstrain.optim.functional import masked_adamw
from dstrain.optim.prepared_state import StateSnapshot, StepCounters


class MaskedAdamW(MaskedOptimizerMixin, Optimizer):
    """AdamW (decoupled weight decay, bias correction, no amsgrad) with fused masking.

    With no masks it matches ``torch.optim.AdamW(foreach=False)`` bit for bit.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        maximize: bool = False,
        *,
        backend: str = "auto",
        mask_source: Optional[MaskSource] = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"lr={lr}: learning rate must be >= 0")
        if eps < 0.0:
            raise ValueError(f"eps={eps}: must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas={betas}: each must be in [0, 1)")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay={weight_decay}: must be >= 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)
        self._init_masking(backend, mask_source)

    def _plain_step(self, group: dict, backend: str) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in params:
            state = self._init_state(p)
            state["step"] = state["step"] + 1  # not in place: a loaded state_dict may share it
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(int(state["step"].item()))
        grads = [p.grad for p in params]
        beta1, beta2 = group["betas"]
        hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                     weight_decay=group["weight_decay"], maximize=group["maximize"])
        if backend == "cpu":
            from dstrain.optim.cpu_kernels import fused_masked_adamw_cpu

            fused_masked_adamw_cpu(params, grads, exp_avgs, exp_avg_sqs, steps, self.masks_for(params), **hyper)
        else:
            masked_adamw(params, grads, exp_avgs, exp_avg_sqs, steps, self.masks_for(params), **hyper)

    def _init_state(self, p) -> dict:
        """The parameter's state, created on its first step: fp32 moments even for low-precision
        parameters (the second moment needs the range)."""
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    # --- the Triton path (see MaskedOptimizerMixin._triton_step) ---------------------
    def _flags_key(self, group: dict) -> tuple:
        return (group["betas"][0], group["maximize"])

    def _build_plan(self, group, params, grads, masks):
        from dstrain.kernels.masked_adamw import AdamWPlan

        states = [self._init_state(p) for p in params]
        return AdamWPlan(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], masks,
                         beta1=group["betas"][0], maximize=group["maximize"], use_cache=False)

    def _prepared_state(self, group, params):
        counters = StepCounters([self.state[p] for p in params])  # before the snapshot: it replaces "step"
        return counters, StateSnapshot(self.state, params, ("step", "exp_avg", "exp_avg_sq"))

    def _run_plan(self, plan, group) -> None:
        counters = plan.counters
        counters.count()
        beta1, beta2 = group["betas"]
        plan.kernel_plan.run(step=counters.step, steps=counters.steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                             eps=group["eps"], weight_decay=group["weight_decay"])

    # --- the C++ CPU path (see MaskedOptimizerMixin._cpu_step) -----------------------
    def _state_ready(self, group, params) -> bool:
        return all(len(self.state[p]) > 0 for p in params)

    def _run_cpu_plan(self, plan, group, grads) -> None:
        from dstrain.kernels.adamw_scalars import adamw_scalars_per_tensor
        from dstrain.optim.cpu_kernels import adamw_with_storages

        counters = plan.counters
        counters.count()
        beta1, beta2 = group["betas"]
        lr, steps = group["lr"], counters.per_tensor()
        neg_step_sizes, bc2_sqrts = adamw_scalars_per_tensor(lr, beta1, beta2, steps)  # computed once per distinct count
        tensors = plan.snapshot.tensors
        adamw_with_storages(plan.stepped, grads, tensors["exp_avg"], tensors["exp_avg_sq"], steps,
                            plan.stepped_masks, plan.mask_storages, neg_step_sizes, bc2_sqrts, lr=lr, beta1=beta1,
                            beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                            maximize=group["maximize"])
