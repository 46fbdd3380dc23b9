"""ZeRO stage 3: masks partitioned like the weights, and a 2-rank stage-3 run equal to one process at stage 0.

Each rank holds the mask of exactly the elements it owns (dstrain/sparsity/zero3.py); the
criteria select across the partitions (all-reduced histograms; N:M one gathered layer at a
time), so the masks must be identical to the single process's and the weights equal within
fp32 reduction-order tolerance, after runs that update the mask several times.
"""
from pathlib import Path

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


def _launch_and_kill_after(spec: dict, tmp_path, checkpoint_step: int):
    """Start the 2-rank worker and SIGKILL the whole process group once a checkpoint >= ``checkpoint_step`` exists."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import HERE, subprocess_env

    from dstrain.run import checkpoints as ckpt

    spec_path = tmp_path / "killed_spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(21000 + os.getpid() % 10000), str(HERE / "dist_worker.py"), str(spec_path)]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and proc.poll() is None:
        done = ckpt.complete_checkpoints(Path(spec["out"]) / "checkpoints")
        if done and done[-1][0] >= checkpoint_step:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    assert killed, "the run ended before it could be killed"


def test_sigkill_then_resume_auto_at_stage_3_is_bit_identical(tmp_path):
    recipe = tiny_recipe(**NO_BN).model_dump()
    full = launch({"recipe": recipe, "ds_config": STAGE3, "out": str(tmp_path / "full")}, tmp_path)
    out = tmp_path / "killed"
    _launch_and_kill_after({"recipe": recipe, "ds_config": STAGE3, "out": str(out), "options": {"save_every": 4}},
                           tmp_path, 12)
    resumed = launch({"recipe": recipe, "ds_config": STAGE3, "out": str(out), "options": {"resume": "auto"}},
                     tmp_path)
    assert resumed[0]["result"]["steps"] == full[0]["result"]["steps"]
    for rank in (0, 1):
        for key, value in full[rank]["state"].items():
            if key.startswith(("w/", "m/")):
                assert torch.equal(value, resumed[rank]["state"][key]), f"rank {rank}: {key}"
    assert Path(out / "result.json").exists()


def test_export_of_a_stage_3_run_has_exact_zeros_and_equals_the_gathered_model(tmp_path):
    from dstrain.run.export import export_checkpoint, load_exported_model

    recipe = tiny_recipe(**NO_BN)
    ranks = launch({"recipe": recipe.model_dump(), "ds_config": STAGE3, "out": str(tmp_path / "run")}, tmp_path)
    export_checkpoint(str(tmp_path / "run"), "torchvision", str(tmp_path / "exported"), log=lambda _: None)
    model = load_exported_model(str(tmp_path / "exported"), log=lambda _: None)
    state = ranks[0]["state"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor.float(), state[f"w/{name}"], rtol=0, atol=0, msg=name)
        if f"m/{name}" in state:
            assert int((tensor[~state[f"m/{name}"]] != 0).sum()) == 0, name


def test_distillation_with_a_partitioned_teacher_matches_one_process(tmp_path):
    """GLUE fine-tuning with KD: the teacher is a ZeRO-3 engine too (as large as the student would fit)."""
    from dstrain import parse_recipe
    from dstrain.testing.glue import WORDS, write_tiny_glue
    from dstrain.testing.tiny_bert import TinyBertSizes, make_tiny_bert

    for seed, folder in ((0, "student"), (3, "teacher")):  # no dropout: 1 and 2 ranks draw different streams
        make_tiny_bert(str(tmp_path / folder), [" ".join(WORDS)] * 3, num_labels=2, seed=seed,
                       sizes=TinyBertSizes(dropout=0.0))
    write_tiny_glue(tmp_path / "glue", "sst2", n_train=64, n_eval=16)
    recipe = parse_recipe({
        "name": "kd", "task": {"name": "glue", "glue_task": "sst2", "model_dir": str(tmp_path / "student"),
                               "data_dir": str(tmp_path / "glue"), "max_length": 16},
        "training": {"epochs": 2, "batch_size": 16, "seed": 0},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},  # AdamW would amplify fp32 reduction-order noise
        "pruning": {"unit": "step", "schedule": {"kind": "gmp", "final_sparsity": 0.7, "start": 1, "end": 6,
                                                 "frequency": 2}},
        "distillation": {"teacher": str(tmp_path / "teacher"), "alpha": 0.5, "temperature": 2.0}})
    single, _ = run(recipe, tmp_path / "single")
    reference = weights_and_masks(single)
    ranks = launch({"recipe": recipe.model_dump(), "ds_config": STAGE3, "out": str(tmp_path / "dist")}, tmp_path)
    assert ranks[0]["state"]["teacher_partitioned"]
    for key, value in reference.items():
        if key.startswith("m/"):
            assert torch.equal(value, ranks[0]["state"][key]), key
        else:
            torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("config", ["zero3_bf16.json", "zero3_offload_cpu.json"])
def test_the_shipped_stage_3_configs_train_with_their_settings(config, tmp_path):
    """launch/configs/zero3_*.json as shipped (bf16; the second with the optimizer offloaded to the CPU), on 2 ranks."""
    import json

    ds_config = json.loads((Path(__file__).resolve().parent.parent / "launch" / "configs" / config).read_text())
    ranks = launch({"recipe": tiny_recipe(**{"training.epochs": 2}).model_dump(), "ds_config": ds_config,
                    "out": str(tmp_path / "d"), "watch_every_step": True, "options": {"max_steps": 12}}, tmp_path)
    for rank in ranks:
        assert rank["result"]["steps"] == 12 and int(rank["state"]["pruned_nonzero_any_step"]) == 0
        assert int(rank["state"]["masked_masters"]) > 0
