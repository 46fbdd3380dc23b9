"""Global 90% magnitude threshold: radix select (kth_smallest_abs) vs torch.topk vs torch.kthvalue.

All three find the k-th smallest |w| over every weight of the model, k = 90% of the
elements.  topk and kthvalue need the magnitudes concatenated into one tensor (the
concatenation is part of their timed step, as it would be in practice);
kth_smallest_abs reads the tensors in place.  Effective GB/s counts one fp32 read
of every weight.  The speed-up column is against ``kthvalue`` (the reference
selector in dstrain.sparsity.magnitude).
"""
from __future__ import annotations

from typing import Dict

import pytest
import torch

from common import ROUNDS, cuda_name, make_params, median_seconds, model_shapes, record, synced
from dstrain.kernels import kth_smallest_abs

_BASELINE_S: Dict[str, float] = {}


def _concat_abs(tensors):
    return torch.cat([t.detach().reshape(-1).abs() for t in tensors])


def _radix(tensors, k):
    return kth_smallest_abs(tensors, k)


def _topk(tensors, k):
    flat = _concat_abs(tensors)
    return float(torch.topk(flat, k, largest=False, sorted=False).values.max())


def _kthvalue(tensors, k):
    return float(torch.kthvalue(_concat_abs(tensors), k).values)


IMPLS = {"kth_smallest_abs": _radix, "topk": _topk, "kthvalue": _kthvalue}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("model", ["resnet50", "bert_base"])
def test_global_threshold(benchmark, model, impl):
    tensors = [p.detach() for p in make_params(model_shapes(model), with_grads=False)]
    n = sum(t.numel() for t in tensors)
    k = int(round(0.9 * n))
    if model not in _BASELINE_S:
        _BASELINE_S[model] = median_seconds(lambda: _kthvalue(tensors, k))
    result = {}
    benchmark.group = f"{model}-select90"
    benchmark.pedantic(synced(lambda: result.__setitem__("v", IMPLS[impl](tensors, k))),
                       rounds=ROUNDS, warmup_rounds=2, iterations=1)
    expected = _kthvalue(tensors, k)
    assert result["v"] == expected, "every selector must find the same threshold"  # correctness, not speed
    record(benchmark, bytes_moved=4 * n, baseline_s=_BASELINE_S[model], baseline_label="kthvalue", label=impl, model=model,
           n_tensors=len(tensors), n_params=n, device=cuda_name())
