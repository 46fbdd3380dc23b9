"""N:M semi-structured pruning: masks, recipe validation, and training that keeps exact N:M after every step."""
import sys
from pathlib import Path

import pytest
import torch
from helpers import NMChecker, launch, run, subprocess_env, tiny_recipe

from dstrain import ConfigError, load_recipe
from dstrain.sparsity.nm import (
    group_view,
    is_nm,
    nm_eligible,
    nm_mask,
    nm_masks,
    parse_pattern,
)

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
NM_SCHEDULE = {"kind": "constant", "sparsity": 0.5}


# --- the mask -------------------------------------------------------------------------------
def test_linear_groups_run_along_input_features_with_exactly_n_kept():
    w = torch.randn(16, 32)
    m = nm_mask(w, (2, 4))
    assert m.shape == w.shape and m.dtype == torch.bool
    assert (m.reshape(16, 8, 4).sum(-1) == 2).all()
    # the kept ones are the two largest magnitudes of each group
    groups = w.abs().reshape(-1, 4)
    kept = groups[m.reshape(-1, 4)].reshape(-1, 2)
    pruned = groups[~m.reshape(-1, 4)].reshape(-1, 2)
    assert (kept.min(1).values >= pruned.max(1).values).all()


def test_conv_groups_are_input_channels_at_one_kernel_position():
    # magnitudes depend on the input channel only: the N:M groups must be along in_channels,
    # so every (out, kh, kw) keeps the same two largest channels of each block of 4
    scale = torch.tensor([1.0, 4.0, 3.0, 2.0, 8.0, 5.0, 7.0, 6.0])
    w = torch.ones(3, 8, 2, 2) * scale.view(1, 8, 1, 1)
    m = nm_mask(w, (2, 4))
    expected = torch.tensor([False, True, True, False, True, False, True, False])
    assert (m == expected.view(1, 8, 1, 1)).all()
    assert is_nm(m, (2, 4))


def test_channels_last_weight_gets_the_same_mask_in_its_own_memory_format():
    w = torch.randn(8, 16, 3, 3)
    cl = w.to(memory_format=torch.channels_last)
    m = nm_mask(cl, (2, 4))
    assert m.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(m, nm_mask(w, (2, 4)))


def test_ties_are_pruned_lowest_index_first():
    w = torch.ones(2, 8)
    m = nm_mask(w, (1, 4))
    assert m.tolist() == [[False, False, False, True] * 2] * 2
    w = torch.tensor([[0.5, -0.5, 0.5, 0.1]])  # equal magnitudes: the earlier one goes
    assert nm_mask(w, (2, 4)).tolist() == [[False, True, True, False]]


def test_layers_whose_reduction_length_is_not_a_multiple_of_m_stay_dense():
    first_conv = torch.randn(8, 3, 3, 3)  # 3 input channels
    assert not nm_eligible(first_conv, (2, 4)) and nm_eligible(torch.randn(8, 4, 3, 3), (2, 4))
    masks = nm_masks([first_conv, torch.randn(4, 8)], 0.5, (2, 4))
    assert masks[0].all() and is_nm(masks[1], (2, 4))
    assert all(m.all() for m in nm_masks([torch.randn(4, 8)], 0.0, (2, 4)))  # a dense phase
    with pytest.raises(ValueError, match="multiple of M=4"):
        nm_mask(first_conv, (2, 4))


def test_group_view_matches_the_sparse_kernel_layout():
    w = torch.arange(2 * 4 * 1 * 2).reshape(2, 4, 1, 2)
    # [out, kh, kw, in] row-major: out 0, kw 0 -> channels 0..3 at that position
    assert group_view(w, 4)[0].tolist() == w[0, :, 0, 0].tolist()


# --- the recipe -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, ok", [("unstructured", None), ("2:4", (2, 4)), ("1:8", (1, 8)), (" 4 : 8", (4, 8))])
def test_pattern_parses(text, ok):
    assert parse_pattern(text) == ok


def _recipe(pattern, schedule):
    return tiny_recipe(**{"pruning.pattern": pattern, "pruning.schedule": schedule})


@pytest.mark.parametrize("pattern, schedule, message", [
    ("4:4", NM_SCHEDULE, "0 < N < M"),
    ("2-4", NM_SCHEDULE, "neither 'unstructured' nor 'N:M'"),
    (124, NM_SCHEDULE, "quote it"),  # what YAML makes of an unquoted 2:4
    ("2:4", {"kind": "constant", "sparsity": 0.9}, "set pruning.schedule.sparsity=0.5"),
    ("2:4", {"kind": "gmp", "final_sparsity": 0.5, "start": 0, "end": 5, "frequency": 1},
     "cannot run schedule kind 'gmp'"),
    ("2:4", {"kind": "dense"}, "cannot run schedule kind 'dense'"),
])
def test_bad_patterns_and_schedules_fail_with_one_line(pattern, schedule, message):
    with pytest.raises(ConfigError) as err:
        _recipe(pattern, schedule)
    text = str(err.value)
    assert message in text and "\n" not in text and "pruning" in text


def test_allowed_schedules_validate():
    for schedule in (NM_SCHEDULE, {"kind": "oneshot", "sparsity": 0.5, "at": 3},
                     {"kind": "acdc", "sparsity": 0.5, "warmup": 2, "compressed": 2, "decompressed": 2, "final": 4}):
        assert _recipe("2:4", schedule).pruning.nm == (2, 4)


def test_unquoted_pattern_from_the_command_line_reads_as_n_of_m():
    """YAML 1.1 would read an unquoted 2:4 as the base-60 number 124; dstrain's loader reads it as text."""
    from dstrain.cli.train import parse_overrides

    recipe = load_recipe(REPO / "recipes" / "digits_nm24.yaml", parse_overrides(["pruning.pattern=2:4"]))
    assert recipe.pruning.nm == (2, 4)


# --- training -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_training_keeps_exact_2_of_4_after_every_step(tmp_path, backend, optimizer, capsys):
    opt = {"name": optimizer, "lr": 0.05 if optimizer == "sgd" else 1e-3, "backend": backend}
    recipe = tiny_recipe(**{"pruning.pattern": "2:4", "pruning.schedule": NM_SCHEDULE, "optimizer": opt,
                            "training.epochs": 1})
    checker = NMChecker((2, 4))
    trainer, result = run(recipe, tmp_path, callbacks=[checker], max_steps=4)
    assert checker.checked == 4 and result["revived"] == 0
    # the first conv has 1 input channel (digits are grey): excluded by default anyway; all others are N:M
    log = capsys.readouterr().out
    assert "pattern 2:4: all" in log


def test_acdc_alternates_dense_and_exact_2_of_4(tmp_path):
    schedule = {"kind": "acdc", "sparsity": 0.5, "warmup": 2, "compressed": 3, "decompressed": 3, "final": 4}
    recipe = tiny_recipe(**{"pruning.pattern": "2:4", "pruning.unit": "step", "pruning.schedule": schedule,
                            "training.epochs": 1})
    checker = NMChecker((2, 4))
    trainer, result = run(recipe, tmp_path, callbacks=[checker])
    assert checker.checked > 0 and checker.dense_steps > 0
    assert abs(result["sparsity"] - 0.5) < 1e-9  # ends compressed: exactly half of every prunable layer


def test_ineligible_layers_are_listed_in_the_run_log(tmp_path, capsys):
    recipe = tiny_recipe(**{"pruning.pattern": "2:4", "pruning.schedule": NM_SCHEDULE, "training.epochs": 1,
                            "pruning.exclude_first_conv": False})
    checker = NMChecker((2, 4))
    trainer, _ = run(recipe, tmp_path, callbacks=[checker], max_steps=2)
    assert checker.checked == 2
    first = next(iter(trainer.registry.params))
    assert trainer.criterion.result()["nm_dense_layers"] == [first]
    assert f"left dense (reduction length not a multiple of 4): {first} [8, 1, 3, 3]" in capsys.readouterr().out


@pytest.mark.parametrize("stage", [0, 2])
def test_two_ranks_keep_exact_2_of_4_under_zero(tmp_path, stage):
    
    recipe = tiny_recipe(**{"pruning.pattern": "2:4", "pruning.schedule": NM_SCHEDULE, "training.epochs": 1})
    ranks = launch({"recipe": recipe.model_dump(), "ds_config": {"zero_optimization": {"stage": stage}},
                    "out": str(tmp_path / "dist"), "pattern": [2, 4]}, tmp_path, worker=HERE / "nm_dist_worker.py")
    for r in ranks:
        assert r["checked"] == r["steps"] > 0 and r["masked_masters"] >= (1 if stage else 0)
    for key in ranks[0]["masks"]:
        assert torch.equal(ranks[0]["masks"][key], ranks[1]["masks"][key]), key


def test_quoted_pattern_from_the_command_line_loads_as_2_of_4():
    from dstrain.cli.train import parse_overrides

    overrides = parse_overrides(["pruning.pattern=\"2:4\"",
                                 "pruning.schedule={kind: oneshot, sparsity: 0.5, at: 10}"])
    recipe = load_recipe(REPO / "recipes" / "digits_gmp90.yaml", overrides)
    assert recipe.pruning.nm == (2, 4) and recipe.pruning.schedule.kind == "oneshot"
    assert load_recipe(REPO / "recipes" / "digits_nm24.yaml").pruning.nm == (2, 4)
