"""GLUE metrics vs scikit-learn / scipy, plus hand-computed values."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from dstrain.metrics import (
    GLUE_METRIC_KEYS,
    PRIMARY_METRIC,
    accuracy,
    f1_binary,
    glue_metrics,
    matthews_corrcoef,
    pearson,
    rankdata_average,
    spearman,
)


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y = rng.integers(0, 2, n)
    p = np.where(rng.random(n) < 0.7, y, 1 - y)  # correlated with y
    assert accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    assert f1_binary(p, y) == pytest.approx(skm.f1_score(y, p, pos_label=1, zero_division=0), abs=1e-12)
    assert matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_matthews_matches_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    y = rng.integers(0, 3, 150)
    p = np.where(rng.random(150) < 0.5, y, rng.integers(0, 3, 150))
    assert matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)


def test_hand_checked_classification_values():
    # tp=2, fp=1, fn=0, tn=1
    p, y = [1, 1, 1, 0], [1, 1, 0, 0]
    assert accuracy(p, y) == 0.75
    assert f1_binary(p, y) == pytest.approx(0.8)
    assert matthews_corrcoef(p, y) == pytest.approx(2 / math.sqrt(12))
    assert matthews_corrcoef([1, 1, 0, 0], [1, 0, 1, 0]) == 0.0
    assert matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    # degenerate: constant predictions -> 0 (as sklearn); no positives anywhere -> f1 0
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0
    assert f1_binary([0, 0], [0, 0]) == 0.0


def test_rank_average_ties():
    np.testing.assert_array_equal(rankdata_average([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(rankdata_average([3, 1, 3, 3, 2]), [4, 1, 4, 4, 2])
    x = np.random.default_rng(0).integers(0, 5, 40)
    np.testing.assert_allclose(rankdata_average(x), stats.rankdata(x, method="average"))


@pytest.mark.parametrize("seed", range(4))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=80)
    y = 0.6 * x + rng.normal(size=80)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    # heavy ties on both sides (STS-B gold scores are on a 0..5 grid with repeats)
    xt = np.round(x * 2) / 2
    yt = rng.integers(0, 6, 80).astype(float)
    assert spearman(xt, yt) == pytest.approx(stats.spearmanr(xt, yt)[0], abs=1e-12)


def test_hand_checked_correlations():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # monotone but nonlinear: spearman 1, pearson < 1
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 4, 9, 100]) < 0.99
    # ties: ranks x=[1.5,1.5,3], y=[1,2,3] -> pearson of those = sqrt(3)/2
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_accepts_torch_tensors():
    p = torch.tensor([1, 0, 1, 1])
    y = torch.tensor([1, 0, 0, 1])
    assert accuracy(p, y) == 0.75
    assert pearson(torch.tensor([1.0, 2.0, 3.5]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(
        stats.pearsonr([1, 2, 3.5], [1, 2, 3])[0]
    )


@pytest.mark.parametrize("task", sorted(GLUE_METRIC_KEYS))
def test_glue_metrics_keys_per_task(task):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    if task == "stsb":
        preds = torch.tensor(rng.normal(size=(50, 1)))
        labels = rng.uniform(0, 5, 50)
    else:
        preds = torch.tensor(rng.normal(size=(50, 3 if task.startswith("mnli") else 2)))
        labels = y
    out = glue_metrics(task, preds, labels)
    assert tuple(out) == GLUE_METRIC_KEYS[task]
    assert PRIMARY_METRIC[task] in out
    assert all(isinstance(v, float) for v in out.values())


def test_glue_metrics_values():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])  # argmax 1,0,1,0
    labels = torch.tensor([1, 0, 0, 0])
    out = glue_metrics("mrpc", logits, labels)
    assert out["accuracy"] == 0.75
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["combined"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert glue_metrics("CoLA", logits, labels)["matthews"] == pytest.approx(skm.matthews_corrcoef([1, 0, 0, 0], [1, 0, 1, 0]))
    assert glue_metrics("sst-2", torch.tensor([1, 0, 1, 0]), labels) == {"accuracy": 0.75}
    s = glue_metrics("stsb", [0.5, 1.0, 4.0], [1.0, 2.0, 5.0])
    assert s["pearson"] == pytest.approx(stats.pearsonr([0.5, 1, 4], [1, 2, 5])[0])
    assert s["spearmanr"] == pytest.approx(1.0)


def test_glue_metrics_errors():
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_metrics("squad", [1], [1])
    with pytest.raises(ValueError, match="predictions has 2 items but labels has 3"):
        glue_metrics("sst2", [1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
