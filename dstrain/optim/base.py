"""What the masked optimizers share: where masks come from and which backend runs."""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional

import torch
from torch import Tensor

MaskSource = Callable[[Tensor], Optional[Tensor]]
"""Maps a parameter (the tensor the optimizer updates) to its bool mask, or None if dense."""

BACKENDS = ("auto", "torch", "triton")


def _no_masks(_: Tensor) -> Optional[Tensor]:
    return None


class MaskedOptimizerMixin:
    """Mask bookkeeping for torch.optim.Optimizer subclasses.

    Masks are looked up per step through a callable rather than stored in the
    optimizer state so that one source of truth (the :class:`~dstrain.masks.MaskRegistry`,
    or its ZeRO partition view) serves both the model and the optimizer, and so the
    optimizer's ``state_dict`` stays loadable by plain torch.
    """

    mask_source: MaskSource
    masking_enabled: bool

    def _init_masking(self, backend: str, mask_source: Optional[MaskSource]) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}; use 'torch' on CPU or 'triton' on CUDA")
        self.backend = backend
        self.mask_source = mask_source or _no_masks
        self.masking_enabled = True

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

    def masks_for(self, params: Iterable[Tensor]) -> List[Optional[Tensor]]:
        if not self.masking_enabled:
            return [None for _ in params]
        return [self.mask_source(p) for p in params]

    def resolve_backend(self, params: List[Tensor]) -> str:
        """'auto' picks Triton only where it can run compiled: contiguous CUDA tensors.

        Channels-last conv weights are dense but not contiguous; the kernels address
        tensors as flat arrays, so 'auto' keeps those on the PyTorch path (under
        ZeRO the optimizer only sees flat partitions, which always qualify).
        """
        if self.backend != "auto":
            return self.backend
        if params and params[0].is_cuda and all(p.is_contiguous() for p in params):
            from kernels import triton_available

            if triton_available():
                return "triton"
        return "torch"
