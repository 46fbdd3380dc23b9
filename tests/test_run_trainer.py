"""End-to-end sparse training through a real DeepSpeed engine on CPU."""
import json

import pytest
import torch
from helpers import InvariantWatch, run, tiny_recipe, weights_and_masks


def test_gmp_run_reaches_target_and_never_revives(tmp_path):
    watch = InvariantWatch()
    trainer, result = run(tiny_recipe(), tmp_path, callbacks=[watch])
    n = trainer.registry.numel
    assert result["steps"] == trainer.controller.total_steps == 3 * (1437 // 128)
    assert len(watch.revived) == result["steps"] - 2
    assert max(watch.revived) == 0
    assert abs(result["sparsity"] - 0.8) <= 1.0 / n
    assert watch.sparsity == sorted(watch.sparsity)  # GMP only ever adds zeros
    assert result["score"] > 0.5  # it learned something at 80% sparsity
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["sparsity"] == pytest.approx(result["sparsity"])


def test_acdc_run_alternates_at_the_right_steps(tmp_path):
    recipe = tiny_recipe(**{"pruning.schedule": {"kind": "acdc", "sparsity": 0.9, "warmup": 5, "compressed": 4,
                                                 "decompressed": 3, "final": 8}, "training.epochs": 2})
    watch = InvariantWatch()
    trainer, result = run(recipe, tmp_path, callbacks=[watch])
    phases = "".join("C" if c else "D" for c in watch.phases)
    assert phases == "DDDDD" + "CCCC" + "DDD" + "CC" + "CCCCCCCC"  # 22 steps; final phase from 14
    assert max(watch.revived) == 0
    assert abs(result["sparsity"] - 0.9) <= 1.0 / trainer.registry.numel
    assert [h["step"] for h in trainer.controller.history] == [5, 12, 14]


def test_stop_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    recipe = tiny_recipe()
    full, _ = run(recipe, tmp_path / "full")
    expected = weights_and_masks(full)
    _, half = run(recipe, tmp_path / "split", max_steps=16, save_every=5)
    assert half["stopped_early"] and half["steps"] == 16
    resumed, result = run(recipe, tmp_path / "split", resume="auto")
    assert result["steps"] == full.controller.total_steps
    got = weights_and_masks(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert resumed.controller.history == full.controller.history


def test_resume_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
    from dstrain import ConfigError

    with pytest.raises(ConfigError, match=r"--resume: .*/dstrain_complete\.json: missing \(the checkpoint was never completed\)"):
        run(tiny_recipe(), tmp_path / "x", resume=str(tmp_path))


def test_epoch_rows_describe_the_epoch_just_trained(tmp_path):
    """AC/DC phases on epoch boundaries: evaluation must not see the next phase's fresh mask."""
    recipe = tiny_recipe(**{"training.epochs": 4, "pruning.unit": "epoch",
                            "pruning.schedule": {"kind": "acdc", "sparsity": 0.9, "warmup": 1, "compressed": 1,
                                                 "decompressed": 1, "final": 1}})
    run(recipe, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["compressed"] for r in rows] == [False, True, False, True]
    assert rows[0]["sparsity"] < 0.01 and rows[2]["sparsity"] < 0.01
    assert rows[1]["sparsity"] == pytest.approx(0.9, abs=1e-4) and rows[3]["sparsity"] == pytest.approx(0.9, abs=1e-4)
    # the first mask flips 90% of the (all-True) mask; later updates are attributed to their own epoch
    assert rows[0]["mask_change_rate"] is None and rows[2]["mask_change_rate"] is None
    assert rows[1]["mask_change_rate"] == pytest.approx(0.9, abs=1e-4) and rows[3]["mask_change_rate"] is not None


@pytest.mark.slow
def test_compiled_model_trains_to_the_same_masks_and_close_weights(tmp_path):
    """task.compile=true: DeepSpeed's engine.compile() (inductor on CPU) changes speed, not the recipe."""
    # a few steps: compiled kernels sum in another order, and at lr 0.1 differences grow step by step
    one = {"training.epochs": 1, "pruning.schedule.end": 11}  # the GMP end inside the 11 steps
    eager, _ = run(tiny_recipe(**one), tmp_path / "eager", max_steps=4)
    compiled, result = run(tiny_recipe(**one, **{"task.compile": True}), tmp_path / "compiled",
                           max_steps=4)
    assert compiled.engine.is_compiled
    assert result["revived"] == 0
    want, got = weights_and_masks(eager), weights_and_masks(compiled)
    for key in want:
        if key.startswith("m/"):
            assert torch.equal(want[key], got[key]), key
        else:
            torch.testing.assert_close(got[key], want[key], rtol=1e-3, atol=1e-4, msg=key)


def test_synthetic_images_report_throughput(tmp_path):
    """The synthetic task (for sparse-vs-dense images/s on a GPU) runs end to end and reports its rate."""
    recipe = tiny_recipe(**{"task": {"name": "synthetic", "arch": "small_resnet", "image_size": 16,
                                     "num_classes": 4, "synthetic_size": 256,
                                     "arch_options": {"depth": 8, "width": 8}},
                            "training.batch_size": 64, "training.epochs": 2,
                            "pruning.schedule": {"kind": "constant", "sparsity": 0.9}})
    trainer, result = run(recipe, tmp_path)
    assert result["steps"] == 8 and result["revived"] == 0
    assert abs(result["sparsity"] - 0.9) < 1e-3
    assert result["train_samples_per_s"] > 0
    assert trainer.task.build_datasets()[0][300][0].shape == (3, 16, 16)


def test_fractional_epochs_end_with_an_evaluation(tmp_path):
    # the GMP end (step units) must lie inside the 16 steps: schedule positions after the end are refused
    trainer, result = run(tiny_recipe(**{"training.epochs": 1.5, "pruning.schedule.end": 16}), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result["steps"] == round(1.5 * 11) == 16
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 16


def test_loader_workers_change_nothing_but_speed(tmp_path):
    base = {"training.epochs": 1, "pruning.schedule.end": 11}
    plain, _ = run(tiny_recipe(**base), tmp_path / "plain")
    workers, _ = run(tiny_recipe(**base, **{"task.num_workers": 2, "task.pin_memory": False}), tmp_path / "workers")
    assert workers.train_loader.num_workers == 2 and not workers.train_loader.pin_memory
    want, got = weights_and_masks(plain), weights_and_masks(workers)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_no_weight_decay_groups_and_errors(tmp_path):
    from dstrain import ConfigError
    from dstrain.models import SmallResNet
    from dstrain.optim.factory import build_optimizer

    recipe = tiny_recipe(**{"optimizer.no_weight_decay": [r"\.bias$", r"(bn\d|shortcut\.1)\.weight$"]})
    opt = build_optimizer(SmallResNet(num_classes=10, in_channels=1, width=8), recipe)
    decayed, exempt = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    assert all(p.dim() == 1 for p in exempt["params"]) and all(p.dim() > 1 for p in decayed["params"])
    bad = tiny_recipe(**{"optimizer.no_weight_decay": ["LayerNorm"]})
    with pytest.raises(ConfigError, match=r"optimizer\.no_weight_decay\[0\]: pattern 'LayerNorm' matches no parameter"):
        build_optimizer(SmallResNet(num_classes=10, in_channels=1, width=8), bad)
    # two parameter groups go through DeepSpeed ZeRO partitions too: covered end to end here
    trainer, result = run(recipe, tmp_path, ds_config={"zero_optimization": {"stage": 2}}, max_steps=5)
    assert len(trainer.client_optimizer.param_groups) == 2 and result["revived"] == 0
    assert trainer.partition_masks.flattened


@pytest.mark.parametrize("reset", [False, True])
def test_acdc_reset_momentum_at_decompression(reset):
    from dstrain import MaskRegistry, PrunableSelection, SparsityController
    from dstrain.models import SmallResNet
    from dstrain.optim.factory import build_optimizer

    recipe = tiny_recipe(**{"pruning.schedule": {"kind": "acdc", "sparsity": 0.9, "warmup": 2, "compressed": 2,
                                                 "decompressed": 2, "final": 2, "reset_momentum": reset}})
    torch.manual_seed(0)
    model = SmallResNet(num_classes=10, in_channels=1, width=8)
    registry = MaskRegistry(model, PrunableSelection.from_pruning(recipe.pruning))
    optimizer = build_optimizer(model, recipe)
    optimizer.set_mask_source(registry.mask_for)
    controller = SparsityController(recipe, registry, optimizer, steps_per_epoch=11)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for step in range(4):  # steps 2, 3 compressed; the dense phase starts at step 4
        controller.begin_step()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        controller.step()
    buffers = [s["momentum_buffer"] for s in optimizer.state.values()]
    assert all(b.abs().sum() > 0 for b in buffers)
    controller.begin_step()
    assert all(bool((b == 0).all()) == reset for b in buffers)
