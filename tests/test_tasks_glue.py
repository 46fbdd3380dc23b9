"""Tiny offline BERT, sparse export for plain transformers, GlueTask end to end, HF callback hooks."""
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader

from dstrain.hf import export_sparse_model, unwrap_model
from dstrain.testing.tiny_bert import make_tiny_bert

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "this movie was wonderful",
    "this film was dull and lifeless",
    "is the cat on the mat ?",
    "the dog is not a cat",
] * 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_bert")
    make_tiny_bert(str(d), TEXTS, num_labels=2, seed=0)
    return str(d)


def _encode(tok, texts=("the cat sat", "a dog ran in the park today")):
    return tok(list(texts), padding=True, return_tensors="pt")


def test_save_reload_identical(tiny_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tok = make_tiny_bert(None, TEXTS, num_labels=2, seed=0)  # same seed as the saved one
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(tiny_dir))
    tok2 = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    model2 = AutoModelForSequenceClassification.from_pretrained(tiny_dir, local_files_only=True).eval()
    enc, enc2 = _encode(tok), _encode(tok2)
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    sd, sd2 = model.state_dict(), model2.state_dict()
    for k, v in sd2.items():
        assert torch.equal(sd[k], v), k
    with torch.no_grad():
        a, b = model(**enc).logits, model2(**enc2).logits
    assert torch.equal(a, b)
    assert a.shape == (2, 2)


def test_seed_determines_weights():
    m0, _ = make_tiny_bert(None, TEXTS, seed=0)
    m0b, _ = make_tiny_bert(None, TEXTS, seed=0)
    m1, _ = make_tiny_bert(None, TEXTS, seed=1)
    w = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(m0.state_dict()[w], m0b.state_dict()[w])
    assert not torch.equal(m0.state_dict()[w], m1.state_dict()[w])


def test_tokenizer_is_bert_style(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    enc = tok("The CAT sat", "a dog")
    ids = enc["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.sep_token_id) == 2
    assert enc["token_type_ids"][0] == 0 and enc["token_type_ids"][-1] == 1
    assert tok.decode(tok("the cat sat")["input_ids"], skip_special_tokens=True) == "the cat sat"  # lowercased
    assert tok.convert_ids_to_tokens(tok("The CAT")["input_ids"])[1:3] == ["the", "cat"]


def test_export_sparse_model_keeps_exact_zeros(tiny_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) > 0.6 for n, p in model.named_parameters()
             if n.endswith(".weight") and p.dim() == 2 and "embeddings" not in n}
    out = tmp_path / "sparse"
    report = export_sparse_model(model, str(out), tokenizer=tok, masks=masks)
    for n in masks:
        assert report[n] == pytest.approx(1 - masks[n].float().mean().item())
    assert json.loads((out / "dstrain_sparsity.json").read_text())["sparsity"].keys() == report.keys()

    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out), local_files_only=True).eval()
    params = dict(reloaded.named_parameters())
    for n, m in masks.items():
        assert torch.equal(params[n] == 0, ~m), n  # zero exactly where pruned, nowhere else
    enc = _encode(AutoTokenizer.from_pretrained(str(out), local_files_only=True))
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, reloaded(**enc).logits)


def test_export_rejects_non_hf_models(tmp_path):
    with pytest.raises(ValueError, match="save_pretrained"):
        export_sparse_model(torch.nn.Linear(2, 2), str(tmp_path))


def test_unwrap_model():
    inner = torch.nn.Linear(2, 2)

    class Engine(torch.nn.Module):  # stands in for DeepSpeedEngine / DDP
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert unwrap_model(Engine(Engine(inner))) is inner


def _write_sst2(root):
    d = os.path.join(root, "SST-2")
    os.makedirs(d)
    rows = ["sentence\tlabel"] + [f"{t} \t{i % 2}" for i, t in enumerate(TEXTS[:6])]
    for name in ("train.tsv", "dev.tsv"):
        with open(os.path.join(d, name), "w") as f:
            f.write("\n".join(rows) + "\n")


def test_glue_task_end_to_end(tiny_dir, tmp_path):
    from dstrain.tasks import build_task
    from dstrain.tasks.glue import GlueTask

    _write_sst2(str(tmp_path))
    task = build_task({"name": "glue", "glue_task": "SST-2", "model_dir": tiny_dir, "data_dir": str(tmp_path),
                       "max_length": 16})
    assert isinstance(task, GlueTask) and task.primary_metric == "accuracy"
    torch.manual_seed(0)
    model = task.build_model()
    train, dev = task.build_datasets()
    assert len(train) == 6 and len(dev) == 6
    batch = next(iter(DataLoader(train, batch_size=3, collate_fn=task.collate_fn)))
    logits, labels = task.forward(model, batch, torch.device("cpu"))
    assert logits.shape == (3, 2) and labels.tolist() == [0, 1, 0]
    loss = task.loss(logits, labels)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))
    loss.backward()
    assert model.classifier.weight.grad is not None
    acc = (logits.argmax(-1) == labels).float().mean().item()
    assert task.metrics(logits.detach(), labels) == {"accuracy": pytest.approx(acc)}


def test_glue_task_regression_and_teacher(tiny_dir, tmp_path):
    from dstrain.distill import distillation_loss
    from dstrain.tasks.glue import GlueTask

    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [head] + [f"{i}\tm\tf\t1\t1\tn\tn\t{TEXTS[i]}\t{TEXTS[i + 1]}\t{i * 0.75}" for i in range(5)]
    os.makedirs(tmp_path / "STS-B")
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "STS-B" / name).write_text("\n".join(rows) + "\n")
    task = GlueTask(glue_task="stsb", model_dir=tiny_dir, data_dir=str(tmp_path))
    assert task.primary_metric == "pearson"
    model = task.build_model()
    assert model.config.num_labels == 1
    train, _ = task.build_datasets()
    batch = task.collate_fn([train[i] for i in range(4)])
    logits, labels = task.forward(model, batch, torch.device("cpu"))
    assert logits.shape == (4,) and labels.dtype == torch.float32
    torch.testing.assert_close(task.loss(logits, labels), torch.nn.functional.mse_loss(logits, labels))
    assert set(task.metrics(logits.detach(), labels)) == {"pearson", "spearmanr", "combined"}
    # the trainer's distillation path: teacher built by the task, run through task.forward
    from dstrain.errors import ConfigError

    with pytest.raises(ConfigError, match="2-label head, stsb needs 1"):
        task.build_teacher(tiny_dir)  # classification checkpoint: wrong head for a regression task
    teacher_model, teacher_tok = make_tiny_bert(str(tmp_path / "teacher"), TEXTS, num_labels=1, seed=3)
    teacher_model.bert.save_pretrained(str(tmp_path / "headless"))  # encoder only, no trained head
    with pytest.raises(ConfigError, match="lacks trained weights.*classifier"):
        task.build_teacher(str(tmp_path / "headless"))
    teacher = task.build_teacher(str(tmp_path / "teacher")).eval()
    torch.testing.assert_close(teacher.classifier.weight, teacher_model.classifier.weight)
    with torch.no_grad():
        t_logits, _ = task.forward(teacher, batch, torch.device("cpu"))
    hard = task.loss(logits, labels)
    kd = distillation_loss(logits, t_logits, hard, 0.5, 2.0)
    torch.testing.assert_close(kd, 0.5 * hard + 0.5 * torch.nn.functional.mse_loss(logits, t_logits))


def test_glue_task_errors(tiny_dir, tmp_path):
    from dstrain.errors import ConfigError
    from dstrain.tasks import build_task
    from dstrain.tasks.glue import GlueTask

    with pytest.raises(ConfigError, match="task.model_dir.*config.json"):
        GlueTask(glue_task="sst2", model_dir=str(tmp_path), data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="task.glue_task.*unknown GLUE task 'squad'"):
        build_task({"name": "glue", "glue_task": "squad", "model_dir": tiny_dir, "data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="task.eval_split"):
        build_task({"name": "glue", "glue_task": "mnli", "model_dir": tiny_dir, "data_dir": str(tmp_path),
                    "eval_split": "validation"})
    t = GlueTask(glue_task="mnli", model_dir=tiny_dir, data_dir=str(tmp_path), eval_split="validation_mismatched")
    assert t.metric_task == "mnli_mismatched"
    with pytest.raises(ConfigError, match="task.data_dir.*no GLUE mnli data"):
        t.build_datasets()
    with pytest.raises(ConfigError, match="distillation.teacher"):
        t.build_teacher(str(tmp_path / "missing"))
