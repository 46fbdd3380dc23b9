"""GLUE from local files: task specs, loaders for three on-disk layouts, tokenization.

Why local only: training machines have no network, so nothing here calls
``datasets.load_dataset("glue", ...)``. Three layouts are accepted because that is how
GLUE copies usually exist on shared storage:

(a) the original GLUE download (``SST-2/train.tsv``, ``MNLI/dev_matched.tsv``, ...),
(b) the hub dataset's parquet export (``<root>/sst2/train-00000-of-00001.parquet``),
(c) a ``DatasetDict.save_to_disk`` directory.

Whatever the layout, :func:`load_glue` returns a :class:`datasets.DatasetDict` with the
hub's column names (``sentence``; ``sentence1``/``sentence2``; ``question``/``sentence``;
``question1``/``question2``; ``premise``/``hypothesis``) plus ``label`` (ClassLabel with
the hub's label order, or float32 for STS-B), and split names ``train``, ``validation``
(MNLI: ``validation_matched``, ``validation_mismatched``). Keeping the hub's conventions
means a model fine-tuned here has the same label ids as one fine-tuned from the hub.
"""
from __future__ import annotations

import csv
import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets.table import InMemoryTable

logger = logging.getLogger(__name__)

__all__ = [
    "GlueTaskSpec",
    "GLUE_TASKS",
    "get_task_spec",
    "load_glue",
    "tokenize_glue",
    "glue_collator",
]

PathLike = Union[str, "os.PathLike[str]"]

# Malformed TSV rows (wrong field count) are skipped, as the GLUE release has a handful
# (QQP); more than this fraction means the file is not the layout we think it is.
_MAX_SKIPPED_FRACTION = 0.01


@dataclass(frozen=True)
class TsvLayout:
    """Where one task's fields live in the original GLUE TSVs.

    ``columns`` maps our column name to a header name, or to a 0-based index when the
    file has no header (CoLA).
    """

    dirname: str
    split_files: Dict[str, str]
    columns: Dict[str, Union[str, int]]
    label_column: Union[str, int]
    has_header: bool = True
    #: maps string labels found in the TSV to ids; None = labels are already numbers
    label_map: Optional[Dict[str, int]] = None


@dataclass(frozen=True)
class GlueTaskSpec:
    """Static facts about one GLUE task."""

    name: str
    sentence_keys: Tuple[str, ...]
    num_labels: int
    is_regression: bool
    label_names: Tuple[str, ...]
    eval_splits: Tuple[str, ...]
    tsv: TsvLayout
    #: directory names tried under a root for layouts (b)/(c) besides ``name``
    dir_aliases: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def splits(self) -> Tuple[str, ...]:
        return ("train",) + self.eval_splits

    def features(self) -> Features:
        feats: Dict[str, Any] = {k: Value("string") for k in self.sentence_keys}
        feats["label"] = Value("float32") if self.is_regression else ClassLabel(names=list(self.label_names))
        return Features(feats)


_DEV = {"train": "train.tsv", "validation": "dev.tsv"}
_NLI2 = {"entailment": 0, "not_entailment": 1}

GLUE_TASKS: Dict[str, GlueTaskSpec] = {
    "cola": GlueTaskSpec(
        "cola", ("sentence",), 2, False, ("unacceptable", "acceptable"), ("validation",),
        # CoLA train/dev are headerless: source, label, original annotation, sentence.
        TsvLayout("CoLA", _DEV, {"sentence": 3}, 1, has_header=False),
    ),
    "sst2": GlueTaskSpec(
        "sst2", ("sentence",), 2, False, ("negative", "positive"), ("validation",),
        TsvLayout("SST-2", _DEV, {"sentence": "sentence"}, "label"), ("sst-2",),
    ),
    "mrpc": GlueTaskSpec(
        "mrpc", ("sentence1", "sentence2"), 2, False, ("not_equivalent", "equivalent"), ("validation",),
        TsvLayout("MRPC", _DEV, {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality"),
    ),
    "stsb": GlueTaskSpec(
        "stsb", ("sentence1", "sentence2"), 1, True, (), ("validation",),
        TsvLayout("STS-B", _DEV, {"sentence1": "sentence1", "sentence2": "sentence2"}, "score"), ("sts-b",),
    ),
    "qqp": GlueTaskSpec(
        "qqp", ("question1", "question2"), 2, False, ("not_duplicate", "duplicate"), ("validation",),
        TsvLayout("QQP", _DEV, {"question1": "question1", "question2": "question2"}, "is_duplicate"),
    ),
    "mnli": GlueTaskSpec(
        "mnli", ("premise", "hypothesis"), 3, False, ("entailment", "neutral", "contradiction"),
        ("validation_matched", "validation_mismatched"),
        TsvLayout(
            "MNLI",
            {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
             "validation_mismatched": "dev_mismatched.tsv"},
            {"premise": "sentence1", "hypothesis": "sentence2"},
            "gold_label",
            label_map={"entailment": 0, "neutral": 1, "contradiction": 2},
        ),
    ),
    "qnli": GlueTaskSpec(
        "qnli", ("question", "sentence"), 2, False, ("entailment", "not_entailment"), ("validation",),
        TsvLayout("QNLI", _DEV, {"question": "question", "sentence": "sentence"}, "label", label_map=_NLI2),
    ),
    "rte": GlueTaskSpec(
        "rte", ("sentence1", "sentence2"), 2, False, ("entailment", "not_entailment"), ("validation",),
        TsvLayout("RTE", _DEV, {"sentence1": "sentence1", "sentence2": "sentence2"}, "label", label_map=_NLI2),
    ),
}

_TASK_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}


def get_task_spec(task: str) -> GlueTaskSpec:
    key = task.lower().strip()
    key = _TASK_ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; use one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[key]


# ---------------------------------------------------------------------------------------
# layout (a): original GLUE TSVs


def _parse_label(spec: GlueTaskSpec, raw: str, where: str) -> Union[int, float]:
    raw = raw.strip()
    try:
        if spec.is_regression:
            return float(raw)
        if spec.tsv.label_map is not None:
            return spec.tsv.label_map[raw]
        value = int(raw)
    except (KeyError, ValueError):
        allowed = sorted(spec.tsv.label_map) if spec.tsv.label_map else "an integer" if not spec.is_regression else "a float"
        raise ValueError(f"{where}: label {raw!r} is not valid for {spec.name} (expected {allowed})") from None
    if not 0 <= value < spec.num_labels:
        raise ValueError(f"{where}: label {value} out of range for {spec.name} ({spec.num_labels} classes)")
    return value


def _read_tsv_split(spec: GlueTaskSpec, path: str) -> Dict[str, List[Any]]:
    """Reads one GLUE TSV with quoting off: GLUE text has unbalanced quotes that csv would join across lines."""
    layout = spec.tsv
    out: Dict[str, List[Any]] = {k: [] for k in spec.sentence_keys}
    out["label"] = []
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if layout.has_header:
            try:
                header = next(reader)
            except StopIteration:
                raise ValueError(f"{path} is empty; expected a header and rows for {spec.name}") from None
            needed = list(layout.columns.values()) + [layout.label_column]
            missing = [c for c in needed if c not in header]
            if missing:
                raise ValueError(
                    f"{path}: missing column(s) {missing} for {spec.name}; header is {header}. "
                    f"Point data_dir at the original GLUE download (folder {layout.dirname}/)"
                )
            idx = {name: header.index(col) for name, col in layout.columns.items()}  # type: ignore[arg-type]
            label_idx = header.index(layout.label_column)  # type: ignore[arg-type]
            n_fields: Optional[int] = len(header)
        else:
            idx = dict(layout.columns)  # type: ignore[arg-type]
            label_idx = int(layout.label_column)
            n_fields = None
        min_fields = max(list(idx.values()) + [label_idx]) + 1
        rows = skipped = 0
        for lineno, row in enumerate(reader, start=2 if layout.has_header else 1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            rows += 1
            if (n_fields is not None and len(row) != n_fields) or len(row) < min_fields:
                skipped += 1
                continue
            for name, i in idx.items():
                out[name].append(row[i])
            out["label"].append(_parse_label(spec, row[label_idx], f"{path}:{lineno}"))
    if rows == 0:
        raise ValueError(f"{path} has no data rows for {spec.name}")
    if skipped:
        if skipped > _MAX_SKIPPED_FRACTION * rows:
            raise ValueError(
                f"{path}: {skipped} of {rows} rows have the wrong number of tab-separated fields; "
                f"this is not the GLUE {layout.dirname} TSV layout"
            )
        logger.warning("%s: skipped %d malformed row(s) of %d", path, skipped, rows)
    return out


def _load_tsv_dir(spec: GlueTaskSpec, d: str, splits: Sequence[str]) -> DatasetDict:
    feats = spec.features()
    result = {}
    for split in splits:
        path = os.path.join(d, spec.tsv.split_files[split])
        if not os.path.isfile(path):
            raise ValueError(
                f"split {split!r} of {spec.name}: file {path} not found; the GLUE layout has "
                f"{', '.join(spec.tsv.split_files.values())} in {d}"
            )
        try:
            columns = _read_tsv_split(spec, path)
        except UnicodeDecodeError as err:  # a binary or mis-encoded file: name it (the codec error does not)
            raise ValueError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); expected the GLUE "
                             f"{spec.tsv.dirname} TSV") from None
        except csv.Error as err:
            raise ValueError(f"{path}: {err}; expected the GLUE {spec.tsv.dirname} TSV") from None
        result[split] = Dataset.from_dict(columns, features=feats)
    return DatasetDict(result)


# ---------------------------------------------------------------------------------------
# layouts (b) parquet and (c) save_to_disk


def _parquet_files(d: str, split: str) -> List[str]:
    return sorted(
        glob.glob(os.path.join(d, f"{split}-*.parquet"))
        + glob.glob(os.path.join(d, f"{split}.parquet"))
        + glob.glob(os.path.join(d, split, "*.parquet"))
    )


def _normalize_columns(spec: GlueTaskSpec, ds: Dataset, where: str) -> Dataset:
    """Keeps the task's text columns and label, maps string labels, casts to the spec's features."""
    cols = set(ds.column_names)
    if "label" not in cols and "labels" in cols:
        ds = ds.rename_column("labels", "label")
        cols = set(ds.column_names)
    missing = [c for c in spec.sentence_keys + ("label",) if c not in cols]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing} for {spec.name}; found {sorted(cols)}. "
            f"Expected the hub GLUE columns {list(spec.sentence_keys) + ['label']}"
        )
    ds = ds.select_columns(list(spec.sentence_keys) + ["label"])
    label_feat = ds.features["label"]
    if isinstance(label_feat, Value) and label_feat.dtype in ("string", "large_string") and not spec.is_regression:
        names = {n: i for i, n in enumerate(spec.label_names)}
        names.update(spec.tsv.label_map or {})
        bad = sorted({x for x in ds["label"] if x not in names})
        if bad:
            raise ValueError(f"{where}: label values {bad[:5]} are not in {sorted(names)} for {spec.name}")
        ds = ds.map(lambda b: {"label": [names[x] for x in b["label"]]}, batched=True, keep_in_memory=True,
                    features=Features({**{k: ds.features[k] for k in spec.sentence_keys}, "label": Value("int64")}))
    if not spec.is_regression:
        labels = ds["label"]
        if any(int(x) < 0 or int(x) >= spec.num_labels for x in labels):
            raise ValueError(
                f"{where}: labels outside [0, {spec.num_labels}) for {spec.name} "
                "(the hub's test splits are unlabelled, label=-1; use train/validation only)"
            )
    return ds.cast(spec.features())


def _load_parquet_dir(spec: GlueTaskSpec, d: str, splits: Sequence[str]) -> DatasetDict:
    import pyarrow.parquet as pq

    result = {}
    for split in splits:
        files = _parquet_files(d, split)
        if not files:
            raise ValueError(
                f"split {split!r} of {spec.name}: no {split}-*.parquet in {d}; "
                f"the hub layout has {', '.join(s + '-*.parquet' for s in spec.splits)}"
            )
        # Read into memory (no datasets cache under ~/.cache); GLUE's largest split is ~400k rows.
        table = pq.read_table(files[0]) if len(files) == 1 else _concat_tables([pq.read_table(f) for f in files])
        result[split] = _normalize_columns(spec, Dataset(InMemoryTable(table)), f"{d}/{split}")
    return DatasetDict(result)


def _concat_tables(tables: List[Any]) -> Any:
    import pyarrow as pa

    return pa.concat_tables(tables, promote_options="default")


def _load_disk_dir(spec: GlueTaskSpec, d: str, splits: Sequence[str]) -> DatasetDict:
    loaded = datasets.load_from_disk(d)
    if isinstance(loaded, Dataset):
        raise ValueError(f"{d} holds a single Dataset, not a DatasetDict; save a DatasetDict with splits {spec.splits}")
    result = {}
    for split in splits:
        if split not in loaded:
            raise ValueError(f"split {split!r} of {spec.name} not in {d} (has {list(loaded)}); expected {spec.splits}")
        result[split] = _normalize_columns(spec, loaded[split], f"{d}/{split}")
    return DatasetDict(result)


def _detect(spec: GlueTaskSpec, d: str) -> Optional[str]:
    if os.path.isfile(os.path.join(d, "dataset_dict.json")):
        return "disk"
    if _parquet_files(d, "train") or any(_parquet_files(d, s) for s in spec.eval_splits):
        return "parquet"
    if any(os.path.isfile(os.path.join(d, f)) for f in spec.tsv.split_files.values()):
        return "tsv"
    return None


def load_glue(task: str, data_dir: PathLike, splits: Optional[Sequence[str]] = None) -> DatasetDict:
    """Loads ``task`` from local files under ``data_dir``; never touches the network.

    ``data_dir`` may be the task's own folder or a root holding it (``<root>/SST-2`` for
    TSVs, ``<root>/sst2`` for parquet or save_to_disk). ``splits`` defaults to all of the
    task's labelled splits. Raises ValueError naming the missing path/split/column.
    """
    spec = get_task_spec(task)
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise ValueError(f"GLUE data_dir {data_dir!r} is not a directory; pass the folder holding {spec.tsv.dirname}/ "
                         f"(GLUE TSVs) or {spec.name}/ (hub parquet or save_to_disk)")
    splits = tuple(splits) if splits is not None else spec.splits
    unknown = [s for s in splits if s not in spec.splits]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown} for {spec.name}; available: {list(spec.splits)}")

    candidates = [os.path.join(data_dir, n) for n in (spec.tsv.dirname, spec.name) + spec.dir_aliases] + [data_dir]
    tried = []
    for d in candidates:
        if not os.path.isdir(d) or d in tried:
            continue
        tried.append(d)
        kind = _detect(spec, d)
        if kind == "disk":
            return _load_disk_dir(spec, d, splits)
        if kind == "parquet":
            return _load_parquet_dir(spec, d, splits)
        if kind == "tsv":
            return _load_tsv_dir(spec, d, splits)
    raise ValueError(
        f"no GLUE {spec.name} data found under {data_dir!r} (looked in {tried}). Expected one of: "
        f"{spec.tsv.dirname}/{{{','.join(spec.tsv.split_files.values())}}} (GLUE download), "
        f"{spec.name}/train-*.parquet (hub parquet), or a save_to_disk DatasetDict"
    )


# ---------------------------------------------------------------------------------------
# tokenization and batching


def tokenize_glue(
    dsd: DatasetDict,
    tokenizer: Any,
    task: str,
    max_length: int = 128,
    keep_in_memory: bool = True,
) -> DatasetDict:
    """Tokenizes (truncating to ``max_length``, no padding) and leaves ``input_ids``,
    ``attention_mask``, ``token_type_ids`` (if the tokenizer makes them) and ``labels``.

    Padding is left to :func:`glue_collator` so each batch pads only to its own longest
    example, which for GLUE's short sentences is several times cheaper than padding to 128.
    ``keep_in_memory`` avoids writing cache files next to read-only data.
    """
    spec = get_task_spec(task)
    if max_length <= 0:
        raise ValueError(f"max_length={max_length}: must be positive")
    keys = spec.sentence_keys

    def encode(batch: Dict[str, List[Any]]) -> Dict[str, Any]:
        texts = [batch[k] for k in keys]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        out = dict(enc)
        out["labels"] = batch["label"]
        return out

    result = {}
    for split, ds in dsd.items():
        missing = [k for k in keys + ("label",) if k not in ds.column_names]
        if missing:
            raise ValueError(f"split {split!r} lacks column(s) {missing}; load it with load_glue({spec.name!r}, ...)")
        result[split] = ds.map(encode, batched=True, remove_columns=ds.column_names, keep_in_memory=keep_in_memory,
                               desc=f"tokenize {spec.name}/{split}")
    return DatasetDict(result)


def glue_collator(tokenizer: Any, pad_to_multiple_of: Optional[int] = None) -> Any:
    """Dynamic padding to the longest example in each batch (optionally to a multiple of 8 for tensor cores)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, padding="longest", pad_to_multiple_of=pad_to_multiple_of,
                                   return_tensors="pt")
