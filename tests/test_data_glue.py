"""GLUE loading from local TSV / parquet / save_to_disk layouts, tokenization and padding."""
import os

import pandas as pd
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Value
from torch.utils.data import DataLoader

from dstrain.data.glue import (
    GLUE_TASKS,
    get_task_spec,
    glue_collator,
    load_glue,
    tokenize_glue,
)
from dstrain.testing.tiny_bert import train_wordpiece_tokenizer


def _write(path, lines, bom=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")


# Sentences with unbalanced / embedded double quotes: read with csv quoting on, the first
# one would swallow the following lines into one field.
SST_TRAIN = [
    "sentence\tlabel",
    '" a gripping tale \t1',
    "dull and lifeless \t0",
    'the film\'s "best" moments \t1',
    "never mind \t0",
]
SST_DEV = ["sentence\tlabel", "wonderful \t1", '"a mess \t0', "fine work \t1"]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [l.split("\t")[0] for l in SST_TRAIN + SST_DEV] + ["the cat sat on the mat", "a dog is not a cat"]
    return train_wordpiece_tokenizer(texts * 3, vocab_size=200)


def test_sst2_tsv_with_quotes(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", SST_TRAIN)
    _write(tmp_path / "SST-2" / "dev.tsv", SST_DEV)
    dsd = load_glue("sst2", tmp_path)
    assert isinstance(dsd, DatasetDict) and set(dsd) == {"train", "validation"}
    assert dsd["train"].column_names == ["sentence", "label"]
    assert dsd["train"]["sentence"] == ['" a gripping tale ', "dull and lifeless ", 'the film\'s "best" moments ', "never mind "]
    assert list(dsd["train"]["label"]) == [1, 0, 1, 0]
    assert dsd["validation"]["sentence"][1] == '"a mess '
    assert isinstance(dsd["train"].features["label"], ClassLabel)
    # the task folder itself works too
    assert load_glue("SST-2", tmp_path / "SST-2")["validation"].num_rows == 3


def test_cola_headerless_tsv(tmp_path):
    rows = [
        "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.",
        "gj04\t0\t*\t\"They drank the pub dry.",
        "cj99\t1\t\tThe more we study verbs, the crazier they get.",
    ]
    _write(tmp_path / "CoLA" / "train.tsv", rows)
    _write(tmp_path / "CoLA" / "dev.tsv", rows[:2])
    dsd = load_glue("cola", tmp_path)
    assert dsd["train"].num_rows == 3  # no row eaten as a header
    assert dsd["train"]["sentence"][1] == '"They drank the pub dry.'
    assert list(dsd["train"]["label"]) == [1, 0, 1]
    assert list(dsd["validation"]["label"]) == [1, 0]


def test_mrpc_tsv_original_header_and_bom(tmp_path):
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = [header, "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him , Amrozi accused his brother .",
            "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 ."]
    _write(tmp_path / "MRPC" / "train.tsv", rows, bom=True)
    _write(tmp_path / "MRPC" / "dev.tsv", rows[:2])
    dsd = load_glue("mrpc", tmp_path)
    assert dsd["train"].column_names == ["sentence1", "sentence2", "label"]
    assert dsd["train"]["sentence2"][1] == "Yucaipa bought Dominick 's in 1995 ."
    assert list(dsd["train"]["label"]) == [1, 0]


def test_rte_string_labels_and_mnli_dev_splits(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel",
                                            "0\tA man sleeps.\tA person rests.\tentailment",
                                            "1\tA man sleeps.\tA man runs.\tnot_entailment"])
    _write(tmp_path / "RTE" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tx\ty\tnot_entailment"])
    dsd = load_glue("rte", tmp_path)
    assert list(dsd["train"]["label"]) == [0, 1] and list(dsd["validation"]["label"]) == [1]

    head = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label"
    row = "0\t1\t1e\tgov\t(\t(\t(\t(\tP one.\tH one.\tneutral\t{}"
    _write(tmp_path / "MNLI" / "train.tsv", [head, row.format("contradiction"), row.format("entailment")])
    _write(tmp_path / "MNLI" / "dev_matched.tsv", [head, row.format("neutral")])
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", [head, row.format("entailment"), row.format("neutral")])
    m = load_glue("mnli", tmp_path)
    assert set(m) == {"train", "validation_matched", "validation_mismatched"}
    assert m["train"].column_names == ["premise", "hypothesis", "label"]
    assert list(m["train"]["label"]) == [2, 0]
    assert list(m["validation_mismatched"]["label"]) == [0, 1]


def test_stsb_float_scores(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [head, "0\tmain\tf\t2012\t1\tnone\tnone\tA plane takes off.\tAn air plane is taking off.\t5.000",
            "1\tmain\tf\t2012\t4\tnone\tnone\tA man plays.\tA woman cooks.\t0.500"]
    _write(tmp_path / "STS-B" / "train.tsv", rows)
    _write(tmp_path / "STS-B" / "dev.tsv", rows)
    ds = load_glue("stsb", tmp_path)["train"]
    assert ds.features["label"] == Value("float32")
    assert list(ds["label"]) == [5.0, 0.5]


def test_parquet_hub_layout(tmp_path):
    d = tmp_path / "qnli"
    d.mkdir()
    pd.DataFrame({"question": ["who?", "what?"], "sentence": ["him.", "that."], "label": [0, 1], "idx": [0, 1]}
                 ).to_parquet(d / "train-00000-of-00001.parquet")
    pd.DataFrame({"question": ["why?"], "sentence": ["because."], "label": [1], "idx": [0]}
                 ).to_parquet(d / "validation-00000-of-00001.parquet")
    # test split is unlabelled (-1) on the hub; it must not be needed or read
    pd.DataFrame({"question": ["?"], "sentence": ["."], "label": [-1], "idx": [0]}).to_parquet(d / "test-00000-of-00001.parquet")
    dsd = load_glue("qnli", tmp_path)
    assert dsd["train"].column_names == ["question", "sentence", "label"]
    assert list(dsd["train"]["label"]) == [0, 1]
    assert dsd["validation"]["question"] == ["why?"]
    assert dsd["train"].features["label"].names == ["entailment", "not_entailment"]


def test_save_to_disk_layout_with_string_labels(tmp_path):
    tr = Dataset.from_dict({"question1": ["a?", "b?"], "question2": ["a!", "c!"], "label": ["duplicate", "not_duplicate"]})
    DatasetDict({"train": tr, "validation": tr}).save_to_disk(str(tmp_path / "qqp"))
    dsd = load_glue("qqp", tmp_path)
    assert list(dsd["train"]["label"]) == [1, 0]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_glue("sst2", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'"):
        load_glue("squad", tmp_path)
    with pytest.raises(ValueError, match=r"no GLUE sst2 data found"):
        load_glue("sst2", tmp_path)
    _write(tmp_path / "SST-2" / "train.tsv", SST_TRAIN)
    with pytest.raises(ValueError, match=r"split 'validation'.*dev.tsv"):
        load_glue("sst2", tmp_path)
    assert load_glue("sst2", tmp_path, splits=["train"])["train"].num_rows == 4
    with pytest.raises(ValueError, match="unknown split"):
        load_glue("sst2", tmp_path, splits=["test"])
    _write(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tmaybe"])
    with pytest.raises(ValueError, match=r"train.tsv:2: label 'maybe'"):
        load_glue("rte", tmp_path, splits=["train"])
    _write(tmp_path / "QQP" / "train.tsv", ["id\tqid1\tqid2\tquestion1\tis_duplicate", "0\t1\t2\ta?\t1"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['question2'\]"):
        load_glue("qqp", tmp_path, splits=["train"])
    d = tmp_path / "mrpc"
    d.mkdir()
    pd.DataFrame({"sentence1": ["a"], "label": [0]}).to_parquet(d / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['sentence2'\]"):
        load_glue("mrpc", tmp_path, splits=["train"])


def test_task_specs():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"}
    assert get_task_spec("STS-B").is_regression and get_task_spec("stsb").num_labels == 1
    assert get_task_spec("mnli").num_labels == 3
    assert get_task_spec("qqp").sentence_keys == ("question1", "question2")


def test_tokenize_and_dynamic_padding(tmp_path, tokenizer):
    _write(tmp_path / "SST-2" / "train.tsv", SST_TRAIN)
    _write(tmp_path / "SST-2" / "dev.tsv", SST_DEV)
    tok = tokenize_glue(load_glue("sst2", tmp_path), tokenizer, "sst2", max_length=5)
    assert set(tok["train"].column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    lengths = [len(x) for x in tok["train"]["input_ids"]]
    assert max(lengths) <= 5 and len(set(lengths)) > 1  # truncated, and not pre-padded
    batch = next(iter(DataLoader(tok["train"], batch_size=4, collate_fn=glue_collator(tokenizer))))
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0, 1, 0]
    am = batch["attention_mask"]
    assert am.sum(1).tolist() == lengths
    assert (batch["input_ids"][am == 0] == tokenizer.pad_token_id).all()
    assert batch["input_ids"][:, 0].eq(tokenizer.cls_token_id).all()


def test_pair_tokenization_and_float_labels(tmp_path, tokenizer):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [head, "0\tm\tf\t1\t1\tn\tn\tthe cat sat\ta dog\t4.25", "1\tm\tf\t1\t1\tn\tn\tthe cat\tthe cat sat on the mat\t1.5"]
    _write(tmp_path / "STS-B" / "train.tsv", rows)
    _write(tmp_path / "STS-B" / "dev.tsv", rows)
    tok = tokenize_glue(load_glue("stsb", tmp_path), tokenizer, "stsb", max_length=64)
    batch = glue_collator(tokenizer, pad_to_multiple_of=8)([tok["train"][0], tok["train"][1]])
    assert batch["input_ids"].shape[1] % 8 == 0
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [4.25, 1.5]
    # second segment marked with token type 1, framed as [CLS] a [SEP] b [SEP]
    ids, tt = tok["train"][0]["input_ids"], tok["train"][0]["token_type_ids"]
    assert ids.count(tokenizer.sep_token_id) == 2 and tt[0] == 0 and tt[-1] == 1
