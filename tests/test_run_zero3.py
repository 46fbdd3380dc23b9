"""ZeRO stage 3: masks partitioned like the weights, and a 2-rank stage-3 run equal to one process at stage 0.

Each rank holds the mask of exactly the elements it owns (dstrain/sparsity/zero3.py); the
criteria select across the partitions (all-reduced histograms; N:M one gathered layer at a
time), so the masks must be identical to the single process's and the weights equal within
fp32 reduction-order tolerance, after runs that update the mask several times.
"""
import pytest
import torch
from helpers import launch, run, tiny_recipe, weights_and_masks

NO_BN = {"task.arch_options": {"depth": 8, "width": 8, "norm": "none"}, "optimizer.lr": 0.05}
STAGE3 = {"zero_optimization": {"stage": 3}}
CASES = {
    "global": {},
    "layerwise": {"pruning.scope": "layerwise"},
    "2:4": {"pruning.pattern": "2:4", "pruning.schedule": {"kind": "acdc", "sparsity": 0.5, "warmup": 2,
                                                           "compressed": 4, "decompressed": 3, "final": 6}},
    "acdc": {"pruning.schedule": {"kind": "acdc", "sparsity": 0.9, "warmup": 3, "compressed": 5, "decompressed": 4,
                                  "final": 8}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_at_stage_3_match_one_process_at_stage_0(case, tmp_path):
    recipe = tiny_recipe(**{**NO_BN, **CASES[case]})
    single, _ = run(recipe, tmp_path / "single")
    reference = weights_and_masks(single)
    ranks = launch({"recipe": recipe.model_dump(), "ds_config": STAGE3, "out": str(tmp_path / "dist")}, tmp_path)
    for rank in ranks:
        state = rank["state"]
        assert int(state["mask_updates"]) >= 2 and int(state["revived"]) == 0 and int(state["master_revived"]) == 0
        for key, value in reference.items():
            if key.startswith("m/"):
                assert torch.equal(value, state[key]), f"{case}: mask {key}"
            else:
                torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=f"{case}: {key}")
    assert ranks[0]["result"]["sparsity"] == pytest.approx(single.registry.weight_sparsity(), abs=1e-9)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_sparsity_invariant_holds_after_every_step_at_stage_3(precision, tmp_path):
    ds_config = {**STAGE3, **({"bf16": {"enabled": True}} if precision == "bf16" else {})}
    ranks = launch({"recipe": tiny_recipe().model_dump(), "ds_config": ds_config, "out": str(tmp_path / "d"),
                    "watch_every_step": True}, tmp_path)
    for rank in ranks:
        state = rank["state"]
        assert int(state["steps_watched"]) == rank["result"]["steps"] > 0
        assert int(state["pruned_nonzero_any_step"]) == 0  # 16-bit partitions, fp32 masters and optimizer state
        assert int(state["masked_masters"]) > 0
