"""oBERT / WoodFisher criterion: arithmetic against an explicit brute-force reference, recipe checks, training runs."""
import copy

import pytest
import torch
from helpers import TINY, run, tiny_recipe

from dstrain import ConfigError, parse_recipe
from dstrain.sparsity.fisher import BlockFisherInverse, BlockLayout, fisher_bytes
from dstrain.sparsity.obert import check_fits

F64 = torch.float64


def _setup(numels=(23, 17), block=5, m=7, damping=1e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, generator=g, dtype=F64) for n in numels]
    grads = [[torch.randn(n, generator=g, dtype=F64) for n in numels] for _ in range(m)]
    layout = BlockLayout(tuple(numels), block)
    finv = BlockFisherInverse(layout.num_blocks, block, m, damping, dtype=F64)
    for gr in grads:
        finv.add_grad(layout.pad(gr))
    return layout, tensors, grads, finv


def _explicit_blocks(layout, grads, m, damping):
    """F per block, from its definition, with the tensor's tail block zero-padded; and its explicit inverse."""
    B = layout.block_size
    G = torch.stack([layout.pad(gr) for gr in grads])  # (m, blocks, B)
    F = damping * torch.eye(B, dtype=F64) + torch.einsum("kbi,kbj->bij", G, G) / m
    return F, torch.linalg.inv(F)


@pytest.mark.parametrize("damping", [1e-2, 1e-7])
def test_woodbury_inverse_and_scores_match_explicit_fp64(damping):
    m = 7
    layout, tensors, grads, finv = _setup(m=m, damping=damping)
    F, Finv = _explicit_blocks(layout, grads, m, damping)
    torch.testing.assert_close(finv.finv, Finv, rtol=1e-8, atol=1e-8 / damping * 1e-6)
    w = layout.pad(tensors)
    expected = w ** 2 / (2 * torch.stack([torch.diagonal(Fb) for Fb in Finv]))
    torch.testing.assert_close(finv.scores(w), expected, rtol=1e-8, atol=0)


def test_obs_update_matches_explicit_formula_with_several_pruned_per_block():
    m, damping = 7, 1e-2
    layout, tensors, grads, finv = _setup(m=m, damping=damping)
    F, Finv = _explicit_blocks(layout, grads, m, damping)
    w = layout.pad(tensors)
    B = layout.block_size
    pruned = torch.zeros_like(w, dtype=torch.bool)
    pruned[0, [0, 2, 3]] = True  # three in one block
    pruned[1, 4] = True  # one alone
    pruned[3, :] = True  # a whole block
    pruned[4, [1, 2]] = True  # tail block of the first tensor (23 = 4*5 + 3): two real weights
    got = finv.obs_update(w, pruned)
    for b in range(layout.num_blocks):
        q = torch.nonzero(pruned[b]).squeeze(1)
        if q.numel() == 0:
            torch.testing.assert_close(got[b], w[b], rtol=0, atol=0)
            continue
        E = torch.eye(B, dtype=F64)[q]  # |q| x B selection
        dw = -Finv[b] @ E.T @ torch.linalg.inv(E @ Finv[b] @ E.T) @ E @ w[b]
        torch.testing.assert_close(got[b], w[b] + dw, rtol=1e-9, atol=1e-9)
        assert torch.all(got[b][q] == 0)
    # the OBS step is the minimum-loss change under the quadratic model: any other feasible change costs more
    b, q = 0, torch.tensor([0, 2, 3])
    dw = got[b] - w[b]
    other = dw.clone()
    other[1] += 1e-3
    assert dw @ F[b] @ dw < other @ F[b] @ other


def test_layout_pads_per_tensor_and_shares_cover_all_blocks():
    layout = BlockLayout((23, 17, 50), 5)
    assert layout.blocks_per_tensor == [5, 4, 10] and layout.padded_numel == 95
    ts = [torch.arange(n, dtype=F64) + 1 for n in layout.numels]
    back = layout.unpad(layout.pad(ts))
    assert all(torch.equal(a, b) for a, b in zip(back, ts))
    for world in (1, 2, 3, 8, 64):
        shares = [layout.share(r, world) for r in range(world)]
        covered = [i for lo, hi in shares for i in range(lo, hi)]
        assert covered == list(range(layout.num_blocks))


def test_memory_estimate_and_refusal_name_the_setting():
    numels = [768 * 768] * 48 + [768 * 3072] * 24  # BERT-base encoder Linear weights
    assert sum(numels) == 84_934_656
    one = fisher_bytes(numels, 50, 1)
    assert one["blocks_per_rank"] == 1_698_720 and one["fisher"] == 1_698_720 * 2500 * 4
    assert fisher_bytes(numels, 50, 8)["fisher"] == 212_340 * 2500 * 4
    with pytest.raises(ConfigError, match=r"pruning\.obert\.block_size.*more ranks"):
        check_fits(numels, 50, 1, free=8 * 1024 ** 3, device="cuda:0")
    check_fits(numels, 50, 64, free=8 * 1024 ** 3, device="cuda:0")


def test_recipe_validation():
    data = copy.deepcopy(TINY)
    data["pruning"]["obert"] = {"num_grads": 4}
    with pytest.raises(ConfigError, match="criterion is not obert"):
        parse_recipe(data)
    data["pruning"]["criterion"] = "obert"
    assert parse_recipe(data).pruning.criterion_settings.num_grads == 4
    data["pruning"]["obert"] = {"block_size": 0}
    with pytest.raises(ConfigError, match=r"pruning\.obert\.block_size"):
        parse_recipe(data)
    data["pruning"]["obert"] = {"damp": 1e-7}
    with pytest.raises(ConfigError, match=r"pruning\.obert\.damp.*unknown key"):
        parse_recipe(data)
    data["pruning"]["obert"] = None
    assert parse_recipe(data).pruning.criterion_settings.block_size == 50  # oBERT's defaults


OBERT = {"pruning.criterion": "obert",
         "pruning.obert": {"num_grads": 4, "block_size": 8, "damping": 1e-4, "grad_batch_size": 64}}


def test_training_run_hits_exact_sparsity_and_keeps_pruned_weights_zero(tmp_path):
    trainer, result = run(tiny_recipe(**OBERT, **{"training.epochs": 2}), tmp_path)
    assert result["revived"] == 0
    assert abs(result["sparsity"] - trainer.registry.mask_sparsity()) < 1e-9
    log = trainer.criterion.log
    assert [row["step"] for row in log] == [h["step"] for h in trainer.controller.history] and len(log) >= 3
    # exact count: round(s * n) pruned at the last update
    n = trainer.registry.numel
    assert sum(int((~m).sum()) for m in trainer.registry.masks.values()) == round(log[-1]["sparsity"] * n)


def test_refuses_a_block_size_that_does_not_fit(tmp_path, monkeypatch):
    """The Fisher blocks must fit the free memory of a rank (here a machine with 64 MiB free)."""
    from dstrain.sparsity import obert

    monkeypatch.setattr(obert, "available_bytes", lambda device: 64 * 2**20)
    recipe = tiny_recipe(**{**OBERT, "pruning.obert": {"num_grads": 2, "block_size": 4096}})
    with pytest.raises(ConfigError, match=r"pruning\.obert\.block_size: 4096 needs .* GiB per rank"):
        run(recipe, tmp_path)


def test_controller_without_gradient_source_refuses_obert():
    """The HF Trainer path (and any direct use) cannot silently fall back to magnitude."""
    from torch import nn

    from dstrain import MaskedSGD, MaskRegistry, SparsityController

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    registry = MaskRegistry(model)
    with pytest.raises(ConfigError, match=r"pruning\.criterion: obert needs gradients"):
        SparsityController(tiny_recipe(**OBERT), registry, MaskedSGD(model.parameters(), lr=0.1), 10)


def test_grad_batch_size_must_split_over_ranks_and_fit_the_data(tmp_path):
    recipe = tiny_recipe(**{**OBERT, "pruning.obert": {"num_grads": 2, "grad_batch_size": 100_000}})
    with pytest.raises(ConfigError, match=r"pruning\.obert\.grad_batch_size: 100000"):
        run(recipe, tmp_path)


def test_stop_and_resume_reproduces_the_uninterrupted_obert_run(tmp_path):
    """Gradient batches are seeded by the recipe step, so a resumed run collects the same ones."""
    from helpers import weights_and_masks

    recipe = tiny_recipe(**OBERT, **{"training.epochs": 2})
    full, _ = run(recipe, tmp_path / "full")
    _, half = run(recipe, tmp_path / "split", max_steps=9, save_every=4)
    assert half["stopped_early"]
    resumed, _ = run(recipe, tmp_path / "split", resume="auto")
    expected, got = weights_and_masks(full), weights_and_masks(resumed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert resumed.controller.history == full.controller.history
    assert [r["step"] for r in resumed.criterion.log] == [r["step"] for r in full.criterion.log if r["step"] > 8]
