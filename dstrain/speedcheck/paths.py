"""The ops timed for one layer shape: dense, 2:4 semi-structured and unstructured CSR, and why a path cannot run.

* dense: the layer's real op, ``F.linear`` or ``F.conv2d`` with its stride, padding, dilation and groups;
* 2:4: ``F.linear(x, torch.sparse.to_sparse_semi_structured(w))`` with ``w`` masked to exact 2:4 by
  magnitude (:func:`dstrain.sparsity.nm.nm_mask`, the masks dstrain trains);
* unstructured: ``torch.sparse.mm(w_csr, x.t())`` with ``w`` masked at the sparsity by magnitude and
  stored as CSR (cuSPARSE on CUDA, MKL or torch's own kernel on the CPU).

torch's sparse tensors take matmuls, not convolutions, so a convolution's sparse paths run its
implicit GEMM (rows = batch x output pixels, K = in_channels/groups x kh x kw in the
channels-last order of dstrain's 2:4 masks, N = out_channels) and are compared with the dense
GEMM of the same shape; the im2col that would feed them is not timed.  Biases are left out of
every path: the same elementwise add on each.

Every sparse result is checked against the dense product with the same masked weight before
it is timed: a path that computes something else gets no number.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from dstrain.export import semi_structured_unavailable
from dstrain.sparsity.nm import nm_eligible, nm_mask
from dstrain.speedcheck.shapes import LayerShape, first_line

TWO_FOUR = "2:4"
UNSTRUCTURED = "unstructured"
PATHS = (TWO_FOUR, UNSTRUCTURED)
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2}
"""Largest allowed |sparse - dense| relative to max |dense| (fp32 accumulation, summed in another order)."""

OK, UNSUPPORTED, NOT_ELIGIBLE, KEPT_DENSE, FAILED, NOT_MEASURED = (
    "ok", "unsupported", "not eligible", "kept dense", "failed", "not measured")


@dataclass
class PathResult:
    """What happened to one sparse path of one shape at one batch size."""

    status: str
    ms: Optional[float] = None
    reason: str = ""

    def to_json(self) -> Dict[str, object]:
        return {"status": self.status, "ms": self.ms, "reason": self.reason}


def to_csr(dense: Tensor) -> Tensor:
    with warnings.catch_warnings():  # torch warns on every conversion that CSR support is "beta"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return dense.to_sparse_csr()




def two_four_unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why 2:4 cannot run at all on this device and dtype (one line), or None."""
    reason = semi_structured_unavailable(device, dtype)
    if reason is not None and device.type == "cpu":
        return ("not supported on cpu (needs a CUDA GPU with compute capability >= 8.0 and fp16/bf16: "
                "torch's 2:4 kernels are cuSPARSELt/CUTLASS)")
    return None if reason is None else f"not supported: {reason}"


def csr_unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why torch's CSR matmul rejects this device and dtype (tried on a tiny matrix), or None."""
    try:
        w = torch.eye(8, device=device, dtype=dtype)
        x = torch.ones(4, 8, device=device, dtype=dtype)
        torch.sparse.mm(to_csr(w), x.t())
    except Exception as err:  # noqa: BLE001 - whatever torch raises is the reason
        return f"not supported on {device.type} in {str(dtype).replace('torch.', '')} ({first_line(err)})"
    return None


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """True = kept: the ``round(sparsity * numel)`` smallest magnitudes pruned (ties: lowest index first)."""
    flat = weight.detach().abs().float().reshape(-1)
    pruned = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if pruned:
        keep[torch.sort(flat, stable=True).indices[:pruned]] = False
    return keep.view_as(weight)


def _rel_error(result: Tensor, expected: Tensor) -> float:
    scale = expected.abs().max().float().clamp_min(1e-12)
    return float((result - expected).abs().max().float() / scale)


class ShapeOps:
    """The weights of one shape in every form (built once, on the device) and the ops at any batch size."""

    def __init__(self, shape: LayerShape, device: torch.device, dtype: torch.dtype, sparsity: float,
                 two_four_reason: Optional[str], csr_reason: Optional[str]) -> None:
        self.shape, self.device, self.dtype, self.sparsity = shape, device, dtype, sparsity
        s = shape
        if s.kind == "linear":
            self.weight = torch.randn(s.out_ch, s.in_ch, device=device, dtype=dtype)
        else:
            self.weight = torch.randn(s.out_ch, s.in_ch // s.groups, *s.kernel, device=device, dtype=dtype)
        self.gemm_weight = self._as_gemm(self.weight)
        self.sparse: Dict[str, Union[object, PathResult]] = {}
        self.masked: Dict[str, Tensor] = {}
        for path, device_reason in ((TWO_FOUR, two_four_reason), (UNSTRUCTURED, csr_reason)):
            self.sparse[path] = self._prepare(path, device_reason)

    def _as_gemm(self, weight: Tensor) -> Tensor:
        """[N, C, kh, kw] -> [N, kh*kw*C] (channels-last reduction order); a Linear weight as it is."""
        return weight if weight.dim() == 2 else weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()

    def _prepare(self, path: str, device_reason: Optional[str]) -> Union[object, PathResult]:
        s = self.shape
        if device_reason is not None:
            return PathResult(UNSUPPORTED, reason=device_reason)
        if not s.prunable:
            return PathResult(KEPT_DENSE, reason="not pruned (first conv, classifier, or excluded by the recipe)")
        if s.groups > 1:
            return PathResult(UNSUPPORTED, reason=f"grouped convolution (groups={s.groups}) is {s.groups} GEMMs, "
                                                  "not one; torch has no sparse grouped conv")
        try:
            if path == TWO_FOUR:
                if not nm_eligible(self.weight, (2, 4)):
                    return PathResult(NOT_ELIGIBLE, reason=f"reduction length {s.in_ch} is not a multiple of 4 "
                                                           "(dstrain keeps such a layer dense)")
                masked = self._as_gemm(self.weight * nm_mask(self.weight, (2, 4)))
                sparse: object = torch.sparse.to_sparse_semi_structured(masked)
            else:
                masked = self._as_gemm(self.weight * magnitude_mask(self.weight, self.sparsity))
                sparse = to_csr(masked)
        except torch.cuda.OutOfMemoryError:
            return PathResult(FAILED, reason="out of GPU memory while converting the weight")
        except Exception as err:  # noqa: BLE001 - a shape or dtype the kernels do not take: said, not raised
            return PathResult(UNSUPPORTED, reason=first_line(err))
        self.masked[path] = masked
        return sparse

    # --- ops at one batch size ----------------------------------------------------------------
    def inputs(self, batch: int) -> None:
        """Random inputs for ``batch``: the layer's own input, and (conv) its implicit-GEMM rows."""
        s = self.shape
        if s.kind == "linear":
            self.x = torch.randn(s.rows(batch), s.in_ch, device=self.device, dtype=self.dtype)
            self.xg = self.x
        else:
            self.x = torch.randn(batch, s.in_ch, *s.in_hw, device=self.device, dtype=self.dtype)
            self.xg = torch.randn(s.rows(batch), s.gemm_k, device=self.device, dtype=self.dtype)

    def release(self) -> None:
        self.x = self.xg = None

    def dense(self) -> Callable[[], Tensor]:
        s, x, w = self.shape, self.x, self.weight
        if s.kind == "linear":
            return lambda: F.linear(x, w)
        return lambda: F.conv2d(x, w, None, s.stride, s.padding, s.dilation, s.groups)

    def dense_gemm(self) -> Callable[[], Tensor]:
        x, w = self.xg, self.gemm_weight
        return lambda: F.linear(x, w)

    def sparse_op(self, path: str) -> Union[Callable[[], Tensor], PathResult]:
        """The checked sparse op at the current batch, or why there is none."""
        sparse = self.sparse[path]
        if isinstance(sparse, PathResult):
            return sparse
        x = self.xg
        if path == TWO_FOUR:
            fn: Callable[[], Tensor] = lambda: F.linear(x, sparse)  # noqa: E731
            transpose = False
        else:
            fn = lambda: torch.sparse.mm(sparse, x.t())  # noqa: E731
            transpose = True
        try:
            result = fn()
            expected = F.linear(x, self.masked[path])
            error = _rel_error(result.t() if transpose else result, expected)
        except torch.cuda.OutOfMemoryError:
            return PathResult(FAILED, reason="out of GPU memory")
        except Exception as err:  # noqa: BLE001 - shape constraints show up at the first call
            return PathResult(UNSUPPORTED, reason=first_line(err))
        if not error <= TOLERANCE.get(self.dtype, 2e-2):
            return PathResult(FAILED, reason=f"result differs from the dense masked product "
                                             f"(max rel. error {error:.2g})")
        return fn
