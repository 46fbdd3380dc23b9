"""Wanda against a direct computation; the shared calibration pass on a tiny random Llama (both criteria)."""
import copy

import pytest
import torch
from llm_helpers import calibration_ids, criterion_for, linear_inputs, tiny_llama

from dstrain import ConfigError, parse_recipe
from dstrain.sparsity.calibration import per_row_mask
from dstrain.sparsity.nm import is_nm
from dstrain.sparsity.sparsegpt import sparsegpt_prune
from dstrain.sparsity.wanda import wanda_mask


def direct_wanda_mask(w, x, k_per_row):
    """|W_ij| · sqrt(Σ_t x_tj²), the k lowest of each row pruned, written out with Python loops."""
    rows, cols = w.shape
    norms = [sum(float(x[t, j]) ** 2 for t in range(x.shape[0])) ** 0.5 for j in range(cols)]
    mask = torch.ones(rows, cols, dtype=torch.bool)
    for i in range(rows):
        scores = [(abs(float(w[i, j])) * norms[j], j) for j in range(cols)]
        for _, j in sorted(scores)[:k_per_row[i]]:
            mask[i, j] = False
    return mask


def test_wanda_mask_matches_the_direct_computation():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 12, generator=g, dtype=torch.float64)
    x = torch.randn(30, 12, generator=g, dtype=torch.float64) * torch.linspace(0.1, 5, 12, dtype=torch.float64)
    got = wanda_mask(w, (x ** 2).sum(0), 0.5)
    assert torch.equal(got, direct_wanda_mask(w, x, [6] * 7))
    # 0.3 x 84 = 25.2 -> 25 pruned: 3 per row, the first 4 rows one more (the layer hits round(s * numel))
    got = wanda_mask(w, (x ** 2).sum(0), 0.3)
    assert torch.equal(got, direct_wanda_mask(w, x, [4, 4, 4, 4, 3, 3, 3]))
    # N:M: the same scores compared within groups of 4 consecutive inputs
    nm = wanda_mask(w, (x ** 2).sum(0), 0.5, (2, 4))
    assert is_nm(nm.double(), (2, 4))
    scores = w.abs() * (x ** 2).sum(0).sqrt()
    for i in range(7):
        for g0 in range(0, 12, 4):
            kept = sorted(range(g0, g0 + 4), key=lambda j: float(scores[i, j]))[2:]
            assert sorted(torch.nonzero(nm[i, g0:g0 + 4]).reshape(-1).add(g0).tolist()) == sorted(kept)


def test_per_row_mask_breaks_ties_by_lowest_column():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 0.0]])
    assert per_row_mask(scores, 4).tolist() == [[False, False, True, True], [True, False, True, False]]


def _direct_sequential(model, ids, prune_layer):
    """Prune decoder layer 0, then layer 1 (its inputs from the model with layer 0 pruned), from plain forwards."""
    model = copy.deepcopy(model)
    masks = {}
    for layer in range(len(model.model.layers)):
        inputs = linear_inputs(model, layer, ids)
        for name, module in model.model.layers[layer].named_modules():
            if isinstance(module, torch.nn.Linear):
                mask, new = prune_layer(module.weight.detach().float(), inputs[name])
                with torch.no_grad():
                    if new is not None:
                        module.weight.copy_(new)
                    module.weight.mul_(mask)
                masks[f"model.layers.{layer}.{name}.weight"] = mask
    return model, masks


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_wanda_criterion_prunes_each_layer_from_the_pruned_layers_below(pattern):
    model, _ = tiny_llama()
    ids = calibration_ids()
    nm = None if pattern == "unstructured" else (2, 4)
    reference, expected = _direct_sequential(model, ids, lambda w, x: (wanda_mask(w, (x.double() ** 2).sum(0), 0.5, nm),
                                                                       None))
    criterion, registry = criterion_for(model, "wanda", ids, pattern, {"batch_size": 4})  # 6 sequences: batches 4 + 2
    criterion.update(0.5, 0)
    assert sorted(registry.masks) == sorted(expected)
    for name, mask in expected.items():
        assert torch.equal(registry.masks[name], mask), name
    assert abs(registry.weight_sparsity() - 0.5) < 1e-12 and registry.revived() == 0
    assert len(criterion.log) == 1 and criterion.log[0]["tokens"] == ids.numel()


def test_sparsegpt_criterion_prunes_each_layer_from_the_pruned_and_corrected_layers_below():
    model, _ = tiny_llama()
    ids = calibration_ids()

    def prune(w, x):
        new, mask, _ = sparsegpt_prune(w, x.T @ x, 0.5, None, blocksize=32, percdamp=0.01)
        return mask, new

    reference, expected = _direct_sequential(model, ids, prune)
    criterion, registry = criterion_for(model, "sparsegpt", ids, settings={"blocksize": 32})
    criterion.update(0.5, 0)
    got, want = dict(model.named_parameters()), dict(reference.named_parameters())
    for name, mask in expected.items():  # one calibration batch: the same sums in the same order as the reference
        assert torch.equal(registry.masks[name], mask), name
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7)
    assert abs(registry.weight_sparsity() - 0.5) < 1e-12 and registry.revived() == 0


def test_zero_sparsity_is_no_pass_and_a_refused_model():
    model, _ = tiny_llama()
    criterion, registry = criterion_for(model, "wanda", calibration_ids())
    assert criterion.update(0.0, 0) == 0.0 and not criterion.log and registry.mask_sparsity() == 0


def test_a_prunable_weight_outside_the_decoder_layers_is_refused():
    model, _ = tiny_llama()
    model.model.extra = torch.nn.Linear(4, 4)  # before lm_head, the classifier left dense
    with pytest.raises(ConfigError, match=r"pruning\.criterion: prunes the Linears inside the decoder layers.*extra"):
        criterion_for(model, "wanda", calibration_ids())


def test_recipe_sections_are_validated():
    from helpers import TINY

    data = copy.deepcopy(TINY)
    data["pruning"]["criterion"] = "sparsegpt"
    data["pruning"]["sparsegpt"] = {"calibration_samples": 32, "seq_len": 256, "percdamp": 0.01, "blocksize": 128}
    assert parse_recipe(data).pruning.criterion_settings.blocksize == 128
    for key, bad, words in [("percdamp", 0, "percdamp"), ("blocksize", 0, "blocksize"),
                            ("calibration_samples", -1, "calibration_samples"), ("percdamp", "x", "percdamp"),
                            ("nsamples", 3, "nsamples.*unknown key")]:
        data["pruning"]["sparsegpt"] = {key: bad}
        with pytest.raises(ConfigError, match=rf"pruning\.sparsegpt\.{words}"):
            parse_recipe(data)
    data["pruning"]["wanda"] = {}
    with pytest.raises(ConfigError, match="wanda settings are given but criterion is not wanda"):
        parse_recipe(data)


def test_sparsegpt_blocksize_must_hold_whole_groups():
    model, _ = tiny_llama()
    with pytest.raises(ConfigError, match=r"pruning\.sparsegpt\.blocksize: 30 is not a multiple of M = 4"):
        criterion_for(model, "sparsegpt", calibration_ids(), "2:4", {"blocksize": 30})
