"""Two processes over gloo through DeepSpeed (ZeRO 0/1/2, bf16): ranks agree, and agree with one process."""
from pathlib import Path

import pytest
import torch
from helpers import launch, run, tiny_recipe, weights_and_masks

HERE = Path(__file__).resolve().parent

# No BatchNorm: batch statistics would differ between one process of 128 and two of 64.
NO_BN = {"task.arch_options": {"depth": 8, "width": 8, "norm": "none"}, "optimizer.lr": 0.05}




@pytest.fixture(scope="module")
def single_process_reference(tmp_path_factory):
    trainer, _ = run(tiny_recipe(**NO_BN), tmp_path_factory.mktemp("single"))
    return weights_and_masks(trainer)


def _assert_ranks_identical(ranks):
    r0, r1 = ranks[0]["state"], ranks[1]["state"]
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"ranks differ in {key}"


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_stage_matches_single_process(stage, tmp_path, single_process_reference):
    ds_config = {"zero_optimization": {"stage": stage}}
    ranks = launch({"recipe": tiny_recipe(**NO_BN).model_dump(), "ds_config": ds_config,
                    "out": str(tmp_path / "dist")}, tmp_path)
    _assert_ranks_identical(ranks)
    state = ranks[0]["state"]
    assert bool(state["flattened"]) == (stage > 0)
    assert int(state["masked_masters"]) > 0 or stage == 0
    # Every rank computes the same global-magnitude mask from its full copy of the weights: no collective.
    assert int(state["mask_updates"]) == 7 and int(state["collectives_in_mask_updates"]) == 0
    assert int(state["revived"]) == 0 and int(state["master_revived"]) == 0
    assert abs(ranks[0]["result"]["sparsity"] - 0.8) < 1e-4
    for key, value in single_process_reference.items():
        if key.startswith("m/"):
            assert torch.equal(value, state[key]), key
        else:
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("stage", [0, 2])
def test_bf16_keeps_pruned_weights_zero_in_model_and_master(stage, tmp_path):
    ds_config = {"zero_optimization": {"stage": stage}, "bf16": {"enabled": True}}
    ranks = launch({"recipe": tiny_recipe().model_dump(), "ds_config": ds_config,
                    "out": str(tmp_path / "dist")}, tmp_path)
    _assert_ranks_identical(ranks)
    state = ranks[0]["state"]
    assert bool(state["flattened"]) and int(state["masked_masters"]) > 0
    assert int(state["revived"]) == 0 and int(state["master_revived"]) == 0
    assert abs(ranks[0]["result"]["sparsity"] - 0.8) < 1e-4


def test_triton_kernels_on_zero2_bf16_partitions_match_the_torch_backend(tmp_path):
    """The fused kernels stepping DeepSpeed's flat fp32 partitions with bf16 gradients (interpreted here)."""
    ds_config = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}
    states = {}
    for backend in ("torch", "triton"):
        recipe = tiny_recipe(**{"optimizer.backend": backend})
        (tmp_path / backend).mkdir()
        ranks = launch({"recipe": recipe.model_dump(), "ds_config": ds_config,
                        "out": str(tmp_path / backend)}, tmp_path / backend)
        _assert_ranks_identical(ranks)
        states[backend] = ranks[0]["state"]
        assert int(states[backend]["masked_masters"]) > 0 and int(states[backend]["master_revived"]) == 0
    for key, value in states["torch"].items():
        assert torch.equal(states["triton"][key], value), key


def test_stage0_checkpoint_resumes_with_another_world_size(tmp_path, single_process_reference):
    """Written by 1 process, finished by 2: the recipe clock and data position carry over (from the newest
    checkpoint that verifies)."""
    recipe = tiny_recipe(**NO_BN)
    out = tmp_path / "run"
    _, half = run(recipe, out, max_steps=16, save_every=8)
    assert half["steps"] == 16
    # and the newest checkpoint damaged: rank 0 verifies, both ranks fall back to step 11 together
    model = out / "checkpoints" / "step000000016" / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:100])
    ranks = launch({"recipe": recipe.model_dump(), "out": str(out), "options": {"resume": "auto"}}, tmp_path)
    _assert_ranks_identical(ranks)
    assert ranks[0]["result"]["steps"] == 33
    state = ranks[0]["state"]
    assert int(state["revived"]) == 0
    for key, value in single_process_reference.items():
        if key.startswith("m/"):
            assert torch.equal(value, state[key]), key
        else:
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)


OBERT = {"pruning.criterion": "obert",
         "pruning.obert": {"num_grads": 3, "block_size": 16, "damping": 1e-4, "grad_batch_size": 64}}


@pytest.fixture(scope="module")
def obert_single_process(tmp_path_factory):
    trainer, result = run(tiny_recipe(**NO_BN, **OBERT), tmp_path_factory.mktemp("obert_single"))
    return weights_and_masks(trainer), len(trainer.criterion.log)


@pytest.mark.parametrize("stage", [0, 2])
def test_obert_two_ranks_match_one_process(stage, tmp_path, obert_single_process):
    """Each rank Woodbury-updates half of the Fisher blocks; masks and weights equal those of one process."""
    reference, updates = obert_single_process
    ranks = launch({"recipe": tiny_recipe(**NO_BN, **OBERT).model_dump(),
                    "ds_config": {"zero_optimization": {"stage": stage}}, "out": str(tmp_path / "dist")}, tmp_path)
    _assert_ranks_identical(ranks)
    state = ranks[0]["state"]
    assert int(state["obert_updates"]) == updates == 7
    # one all-reduce per gradient, one for the scores, one for the corrected weights; none per block
    assert int(state["collectives_in_obert_updates"]) == updates * (3 + 2)
    assert int(state["revived"]) == 0 and int(state["master_revived"]) == 0
    assert abs(ranks[0]["result"]["sparsity"] - 0.8) < 1e-4
    for key, value in reference.items():
        if key.startswith("m/"):
            assert torch.equal(value, state[key]), key
        else:
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_obert_under_zero2_bf16_keeps_masters_and_weights_pruned(tmp_path):
    """The OBS correction reaches the fp32 master partitions; pruned entries are zero there and in the bf16 model."""
    ds_config = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}
    ranks = launch({"recipe": tiny_recipe(**OBERT).model_dump(), "ds_config": ds_config,
                    "out": str(tmp_path / "dist")}, tmp_path)
    _assert_ranks_identical(ranks)
    state = ranks[0]["state"]
    assert int(state["obert_updates"]) == 7 and int(state["masked_masters"]) > 0
    assert int(state["revived"]) == 0 and int(state["master_revived"]) == 0
    assert abs(ranks[0]["result"]["sparsity"] - 0.8) < 1e-4
