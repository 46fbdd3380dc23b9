"""GLUE data files in the original download's layout, small and deterministic, for tests and smoke runs.

Why files and not in-memory datasets: the GLUE loader (:mod:`dstrain.data.glue`) reads the
download's TSV layouts (header or not, column positions, label names) and that is what a
test of a GLUE run must go through.
"""
from __future__ import annotations

import random
from pathlib import Path

WORDS = ["the", "film", "cast", "plot", "was", "very", "dull", "great", "is", "not", "a", "story", "good", "bad"]


def write_tiny_glue(root: Path, task: str, n_train: int = 32, n_eval: int = 16) -> None:
    """GLUE TSVs for ``task`` in the original download's layout (columns, header, labels from its spec)."""
    from dstrain.data.glue import get_task_spec

    spec = get_task_spec(task)
    layout = spec.tsv
    rng = random.Random(0)
    labels = list(layout.label_map) if layout.label_map else None
    folder = root / layout.dirname
    folder.mkdir(parents=True)
    for split, filename in layout.split_files.items():
        n = n_train if split == "train" else n_eval
        if layout.has_header:
            columns = list(layout.columns.values()) + [layout.label_column]
            rows = [columns]
        else:
            columns = list(range(max(list(layout.columns.values()) + [layout.label_column]) + 1))
            rows = []
        for _ in range(n):
            row = ["x"] * len(columns)
            for col in layout.columns.values():
                row[columns.index(col)] = " ".join(rng.choice(WORDS) for _ in range(6))
            if labels:
                label = rng.choice(labels)
            elif spec.is_regression:
                label = f"{rng.uniform(0, 5):.2f}"
            else:
                label = str(rng.randrange(spec.num_labels))
            row[columns.index(layout.label_column)] = label
            rows.append(row)
        (folder / filename).write_text("\n".join("\t".join(map(str, r)) for r in rows) + "\n")
