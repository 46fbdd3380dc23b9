"""dstrain recipes inside an ordinary transformers.Trainer, and GLUE sparse fine-tuning with KD.

Everything runs a 2-layer tiny BERT (dropout 0, built offline) on a generated GLUE-layout
SST-2 folder, on CPU.
"""
import os
import random

import pytest
import torch
from helpers import InvariantWatch, run
from torch.utils.data import DistributedSampler

from dstrain import ConfigError, parse_recipe
from dstrain.hf import (
    DstrainRecipeCallback,
    RecipeLRScheduler,
    export_sparse_model,
    prepare_hf_sparse_training,
)
from dstrain.testing.tiny_bert import make_tiny_bert

pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")

SUBJECTS = ["the film", "this movie", "the plot", "the cast", "the story", "the music", "every scene"]
ADVERBS = ["very", "truly", "rather", "quite", "so", "really"]
GOOD = ["wonderful", "great", "moving", "brilliant", "charming", "superb"]
BAD = ["dull", "boring", "awful", "lifeless", "clumsy", "tedious"]
N_TRAIN, N_DEV, BATCH, SEED = 96, 32, 16, 7  # 6 optimizer steps per epoch


def _sentences(n, rng):
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        adj = rng.choice(GOOD if label else BAD)
        rows.append((f"{rng.choice(SUBJECTS)} was {rng.choice(ADVERBS)} {adj}", label))
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    os.makedirs(root / "SST-2")
    rng = random.Random(0)
    for name, n in (("train.tsv", N_TRAIN), ("dev.tsv", N_DEV)):
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in _sentences(n, rng)]
        (root / "SST-2" / name).write_text("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Tiny BERT with dropout off: forward passes are deterministic, so two trainers can agree exactly."""
    d = str(tmp_path_factory.mktemp("tiny_bert"))
    texts = [" ".join(SUBJECTS + ADVERBS + GOOD + BAD + ["was"])] * 3
    model, tok = make_tiny_bert(None, texts, num_labels=2, seed=0)
    model.config.hidden_dropout_prob = 0.0
    model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _recipe(tiny_dir, data_dir, **extra):
    data = {
        "name": "tiny-glue-gmp",
        "task": {"name": "glue", "glue_task": "sst2", "model_dir": tiny_dir, "data_dir": data_dir, "max_length": 16},
        "training": {"epochs": 3, "batch_size": BATCH, "seed": SEED},
        "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01, "backend": "torch"},
        "lr_schedule": {"shape": "linear", "unit": "step", "warmup": 2},
        "pruning": {"unit": "step", "schedule": {"kind": "gmp", "initial_sparsity": 0.0, "final_sparsity": 0.8,
                                                 "start": 2, "end": 12, "frequency": 2}},
    }
    data.update(extra)
    return parse_recipe(data)


def _hf_trainer(recipe, out_dir, extra_callbacks=()):
    """transformers.Trainer driven by the recipe, with SparseTrainer's exact per-epoch sample order."""
    from transformers import Trainer, TrainingArguments
    from transformers import TrainerCallback as HFCallback

    from dstrain.run.seeding import seed_everything
    from dstrain.tasks import build_task

    seed_everything(recipe.training.seed)
    task = build_task(recipe.task)
    model = task.build_model()
    train_set, _ = task.build_datasets()
    sparse = prepare_hf_sparse_training(model, recipe, len(train_set) // recipe.training.batch_size)

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            self.sampler = DistributedSampler(train_dataset if train_dataset is not None else self.train_dataset,
                                              num_replicas=1, rank=0, shuffle=True, seed=recipe.training.seed,
                                              drop_last=True)
            return self.sampler

    class SetEpoch(HFCallback):
        def __init__(self):
            self.epoch = 0

        def on_epoch_begin(self, args, state, control, **kwargs):
            trainer.sampler.set_epoch(self.epoch)
            self.epoch += 1

    args = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=recipe.training.batch_size,
                             max_steps=sparse.controller.total_steps, max_grad_norm=0.0, dataloader_drop_last=True,
                             report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=recipe.training.seed, dataloader_num_workers=0)
    trainer = SameOrderTrainer(model=model, args=args, train_dataset=train_set, data_collator=task.collate_fn,
                               optimizers=(sparse.optimizer, sparse.lr_scheduler),
                               callbacks=[sparse.callback, SetEpoch(), *extra_callbacks])
    return trainer, sparse, task


def _hf_watch():
    """HF-side twin of helpers.InvariantWatch: revived weights after every compressed step."""
    from transformers import TrainerCallback as HFCallback

    class Watch(HFCallback):
        def __init__(self):
            self.revived, self.sparsity, self.sparse = [], [], None

        def on_step_end(self, args, state, control, **kwargs):
            ctl = self.sparse.controller
            if ctl.sparsity.is_compressed(ctl.step_count - 1):
                self.revived.append(self.sparse.registry.revived())
            self.sparsity.append(self.sparse.registry.mask_sparsity())

    return Watch()


def test_hf_trainer_reaches_target_and_export_reloads(tiny_dir, data_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    recipe = _recipe(tiny_dir, data_dir)
    watch = _hf_watch()
    trainer, sparse, task = _hf_trainer(recipe, tmp_path / "hf", [watch])
    watch.sparse = sparse
    trainer.train()
    ctl, reg = sparse.controller, sparse.registry
    assert ctl.step_count == ctl.total_steps == trainer.state.global_step == 18
    assert [h["step"] for h in ctl.history] == [2, 4, 6, 8, 10, 12]
    assert len(watch.revived) == 16 and max(watch.revived) == 0
    assert watch.sparsity == sorted(watch.sparsity)
    assert abs(reg.weight_sparsity() - 0.8) <= 1.0 / reg.numel
    assert ctl.get_last_lr() == trainer.lr_scheduler.get_last_lr()  # HF logs the recipe's LR
    # only encoder/pooler Linear weights are pruned; the classifier (last Linear) stays dense
    assert "classifier.weight" not in reg.masks and "bert.pooler.dense.weight" in reg.masks
    assert not any("embeddings" in n or "LayerNorm" in n for n in reg.masks)

    out = tmp_path / "export"
    export_sparse_model(trainer.model, str(out), tokenizer=task.tokenizer)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out), local_files_only=True)
    params = dict(reloaded.named_parameters())
    for name, mask in reg.state_dict().items():
        assert torch.equal(params[name] == 0, ~mask), name
    zeros = sum(int((params[n] == 0).sum()) for n in reg.masks)
    assert abs(zeros / reg.numel - 0.8) <= 1.0 / reg.numel


def test_hf_callback_and_sparse_trainer_agree(tiny_dir, data_dir, tmp_path):
    """Same seed, data order, batch, optimizer and recipe: HF Trainer + callback == SparseTrainer (DeepSpeed)."""
    recipe = _recipe(tiny_dir, data_dir)
    ds_trainer, result = run(recipe, tmp_path / "ds")
    hf_trainer, sparse, _ = _hf_trainer(recipe, tmp_path / "hf")
    hf_trainer.train()

    assert sparse.controller.history == ds_trainer.controller.history
    ds_masks, hf_masks = ds_trainer.registry.state_dict(), sparse.registry.state_dict()
    assert ds_masks.keys() == hf_masks.keys()
    for name in ds_masks:
        assert torch.equal(ds_masks[name], hf_masks[name]), name
    assert [round(h["mask_change_rate"], 3) for h in ds_trainer.controller.history][1:3] == [0.39, 0.237]
    ds_state = ds_trainer.engine.module.state_dict()
    hf_state = hf_trainer.model.state_dict()
    assert ds_state.keys() == hf_state.keys()
    # fp32 on CPU, world of one, same kernels in the same order: DeepSpeed's engine adds no arithmetic
    # (loss / 1 accumulation step, all-reduce over one rank), so the weights agree bit for bit.
    for name in ds_state:
        assert torch.equal(hf_state[name], ds_state[name]), name
    assert sparse.registry.weight_sparsity() == pytest.approx(result["sparsity"])


def test_distilled_sparse_glue_finetuning(tiny_dir, data_dir, tmp_path):
    """Dense teacher (1 epoch), then GMP to 80% with KD from it: target reached, nothing revived."""
    dense = _recipe(tiny_dir, data_dir, name="teacher", training={"epochs": 1, "batch_size": BATCH, "seed": SEED},
                    pruning={"schedule": {"kind": "dense"}})
    teacher, teacher_result = run(dense, tmp_path / "teacher")
    # the trainer exports a finished GLUE run as a save_pretrained folder: the next run's teacher
    teacher_dir = tmp_path / "teacher" / "final_model"
    assert teacher_result["exported_to"] == str(teacher_dir)

    student = _recipe(tiny_dir, data_dir, distillation={"teacher": str(teacher_dir), "alpha": 0.7,
                                                         "temperature": 2.0})
    watch = InvariantWatch()
    trainer, result = run(student, tmp_path / "student", callbacks=[watch])
    assert trainer.teacher is not None and not trainer.teacher.training
    torch.testing.assert_close(trainer.teacher.classifier.weight, teacher.engine.module.classifier.weight)
    assert result["steps"] == 18 and len(watch.revived) == 16 and max(watch.revived) == 0
    assert result["revived"] == 0
    assert abs(result["sparsity"] - 0.8) <= 1.0 / trainer.registry.numel


# --- API checks (no training) --------------------------------------------------------------


def test_prepare_refuses_distillation_and_wires_the_pieces(tiny_dir, data_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, local_files_only=True)
    with pytest.raises(ConfigError, match="distillation"):
        prepare_hf_sparse_training(model, _recipe(tiny_dir, data_dir, distillation={"teacher": tiny_dir}), 6)
    optimizer, scheduler, callback = sparse = prepare_hf_sparse_training(model, _recipe(tiny_dir, data_dir), 6)
    assert isinstance(scheduler, RecipeLRScheduler) and isinstance(callback, DstrainRecipeCallback)
    assert sparse.controller.optimizer is optimizer and sparse.registry is sparse.controller.registry
    assert scheduler.get_last_lr() == [0.0]  # linear warm-up from 0
    scheduler.step()
    scheduler.step()  # accelerate steps once per process; the clock must still move once
    assert scheduler.get_last_lr() == [0.0]  # the shim never changes the LR itself
    with pytest.raises(ValueError, match="RecipeLRScheduler"):
        DstrainRecipeCallback(sparse.controller, object())


def test_callback_counts_applied_steps_only(tiny_dir, data_dir):
    from transformers import (
        AutoModelForSequenceClassification,
        TrainerControl,
        TrainerState,
    )
    from transformers.trainer_callback import CallbackHandler

    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, local_files_only=True)
    sparse = prepare_hf_sparse_training(model, _recipe(tiny_dir, data_dir), 6)
    handler = CallbackHandler([sparse.callback], model, None, sparse.optimizer, sparse.lr_scheduler)
    state, control = TrainerState(), TrainerControl()
    for skipped in (False, True, False, False):  # the order Trainer._run_epoch uses
        handler.on_step_begin(None, state, control)
        if not skipped:  # HF steps the scheduler only when the optimizer step was applied
            sparse.lr_scheduler.step()
        state.global_step += 1
        handler.on_step_end(None, state, control)
    assert sparse.controller.step_count == 3
    assert [h["step"] for h in sparse.controller.history] == [2]
    handler.on_step_begin(None, state, control)  # the next step's LR is set right before it runs
    assert sparse.controller.get_last_lr() == [pytest.approx(2e-3 * (1 - 1 / 16))]  # linear decay, step 3 of 18


def test_trainer_length_mismatch_is_a_config_error(tiny_dir, data_dir, tmp_path):
    trainer, _, _ = _hf_trainer(_recipe(tiny_dir, data_dir), tmp_path)
    trainer.args.max_steps = 30
    with pytest.raises(ConfigError, match="max_steps=18"):
        trainer.train()


def test_shipped_bert_recipes_prune_only_encoder_linears(tiny_dir):
    """recipes/bert: q/k/v, attention output, intermediate and output weights; pooler, classifier,
    embeddings, LayerNorms and biases dense (checked on a real BertForSequenceClassification)."""
    from pathlib import Path

    from transformers import AutoModelForSequenceClassification

    from dstrain import load_recipe
    from dstrain.sparsity.registry import PrunableSelection, select_prunable

    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, local_files_only=True)
    kinds = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")
    expected = [f"bert.encoder.layer.{i}.{k}.weight" for i in range(2) for k in kinds]
    paths = sorted((Path(__file__).resolve().parent.parent / "recipes" / "bert").glob("*.yaml"))
    assert len(paths) == 11  # dense, 6 GMP+KD, 3 oBERT+KD, 2:4+KD
    for path in paths:
        recipe = load_recipe(path)
        assert sorted(select_prunable(model, PrunableSelection.from_pruning(recipe.pruning))) == sorted(expected), path.name


def test_hf_resume_from_checkpoint_reproduces_the_uninterrupted_run(tiny_dir, data_dir, tmp_path):
    """HF checkpoints carry the recipe (masks, clock) in the scheduler state; a resumed run ends identical."""
    from transformers import TrainerCallback as HFCallback

    recipe = _recipe(tiny_dir, data_dir)
    steps_per_epoch = N_TRAIN // BATCH

    class EpochFromStep(HFCallback):  # sample order for the epoch HF is in, also after a resume
        def on_epoch_begin(self, args, state, control, **kwargs):
            trainer.sampler.set_epoch(state.global_step // steps_per_epoch)

    trainer, full, _ = _hf_trainer(recipe, tmp_path / "full", [EpochFromStep()])
    trainer.args.save_strategy, trainer.args.save_steps = "steps", 7
    trainer.train()
    checkpoint = tmp_path / "full" / "checkpoint-7"
    assert checkpoint.is_dir()

    trainer, resumed, _ = _hf_trainer(recipe, tmp_path / "resumed", [EpochFromStep()])
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.controller.step_count == full.controller.step_count == 18
    assert resumed.controller.history == full.controller.history
    for name in full.registry.names():
        assert torch.equal(full.registry.masks[name], resumed.registry.masks[name]), name
    for (name, a), (_, b) in zip(full.registry.model.named_parameters(), resumed.registry.model.named_parameters()):
        assert torch.equal(a, b), name
