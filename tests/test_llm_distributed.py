"""A tiny random Llama end to end through the real trainer on 2 gloo ranks (ZeRO-2): one-shot SparseGPT / Wanda at
step 0 from each rank's share of the calibration data, then sparse fine-tuning with logit KD + SquareHead from the
frozen dense model; every rank must hold the same masks and weights."""
import pytest
import torch
from helpers import launch, run, weights_and_masks

from dstrain import parse_recipe


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from dstrain.testing.tiny_llama import make_tiny_llama, write_tiny_text

    root = tmp_path_factory.mktemp("llm")
    make_tiny_llama(str(root / "model"))
    write_tiny_text(str(root / "text.txt"), sentences=60)
    return root


def _recipe(files, criterion, pattern):
    return parse_recipe({
        "name": f"tiny_{criterion}", "task": {"name": "causal_lm", "model": str(files / "model"),
                                              "data": [str(files / "text.txt")], "max_length": 16,
                                              "validation_every": 4, "eval_blocks": 8},
        "training": {"epochs": 0.2, "batch_size": 4, "seed": 0},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "lr_schedule": {"shape": "constant"},
        "pruning": {"criterion": criterion, criterion: {"calibration_samples": 6, "seq_len": 16, "batch_size": 2},
                    "pattern": pattern, "unit": "step", "schedule": {"kind": "oneshot", "sparsity": 0.5, "at": 0}},
        "distillation": {"teacher": "same", "alpha": 0.5, "temperature": 2.0, "squarehead": 1.0}})


@pytest.mark.parametrize("criterion,pattern", [("sparsegpt", "2:4"), ("wanda", "unstructured")])
def test_two_ranks_zero2_prune_identically_and_keep_the_masks(files, tmp_path, criterion, pattern):
    recipe = _recipe(files, criterion, pattern)
    ranks = launch({"recipe": recipe.model_dump(), "ds_config": {"zero_optimization": {"stage": 2}},
                    "out": str(tmp_path / "dist"), "options": {"max_steps": 3}}, tmp_path)
    r0, r1 = ranks[0]["state"], ranks[1]["state"]
    masks = [k for k in r0 if k.startswith("m/")]
    assert len(masks) == 14  # 7 Linears in each of the 2 decoder layers
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"ranks differ in {key}"
    assert bool(r0["flattened"]) and int(r0["masked_masters"]) > 0  # ZeRO-2: fp32 master partitions
    assert int(r0["revived"]) == 0 and int(r0["master_revived"]) == 0
    result = ranks[0]["result"]
    assert result["steps"] == 3 and result["world_size"] == 2 and abs(result["sparsity"] - 0.5) < 1e-12
    assert result["calibration_tokens"] == 6 * 16 and f"{criterion}_pass_s" in result
    if pattern == "2:4":
        assert result["nm_exact"] and result["nm_dense_layers"] == []
    # the statistics summed over the two ranks' halves are those of one process that sees all the sequences
    single, _ = run(recipe, tmp_path / "single", max_steps=3)
    reference = weights_and_masks(single)
    for key in masks:
        agree = float((reference[key] == r0[key]).float().mean())
        # Wanda's norms are float64 sums; SparseGPT's Hessian float32 ones, summed in another order
        assert agree == 1.0 if criterion == "wanda" else agree > 0.99, (key, agree)


def test_sparse_finetuning_with_squarehead_at_stage_3_matches_one_process(files, tmp_path):
    """The recipes' second stage under ZeRO-3: a fixed layer-wise mask, KD + SquareHead from a partitioned teacher."""
    recipe = parse_recipe({
        "name": "tiny_sft", "task": {"name": "causal_lm", "model": str(files / "model"), "data": [str(files / "text.txt")],
                                     "max_length": 16, "validation_every": 4, "eval_blocks": 8},
        "training": {"epochs": 0.2, "batch_size": 4, "seed": 0},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},  # AdamW would amplify fp32 reduction-order noise
        "lr_schedule": {"shape": "constant"},
        "pruning": {"criterion": "magnitude", "scope": "layerwise", "unit": "step",
                    "schedule": {"kind": "oneshot", "sparsity": 0.5, "at": 0}},
        "distillation": {"teacher": "same", "alpha": 0.5, "temperature": 2.0, "squarehead": 1.0}})
    single, _ = run(recipe, tmp_path / "single", max_steps=3)
    reference = weights_and_masks(single)
    ranks = launch({"recipe": recipe.model_dump(), "ds_config": {"zero_optimization": {"stage": 3}},
                    "out": str(tmp_path / "dist"), "options": {"max_steps": 3}}, tmp_path)
    assert ranks[0]["state"]["teacher_partitioned"]
    masks = [k for k in reference if k.startswith("m/")]
    assert len(masks) == 14
    for rank in ranks:
        state = rank["state"]
        assert int(state["revived"]) == 0 and int(state["master_revived"]) == 0
        for key, value in reference.items():
            if key.startswith("m/"):
                assert torch.equal(value, state[key]), key
            else:
                torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_calibrated_criteria_are_refused_at_stage_3_in_one_line(files, tmp_path, criterion):
    import json
    import subprocess
    import sys

    from helpers import subprocess_env

    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    (tmp_path / "r.yaml").write_text(json.dumps(_recipe(files, criterion, "unstructured").model_dump(mode="json")))
    proc = subprocess.run([sys.executable, "-m", "dstrain.cli", "train", "--recipe", str(tmp_path / "r.yaml"),
                           "--deepspeed_config", str(tmp_path / "ds.json"), "--output_dir", str(tmp_path / "out"),
                           "--no_progress"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and "pruning.criterion" in last and "stage 3" in last, proc.stderr[-2000:]
