"""The report's figure: validation score, training loss and sparsity per epoch, one line per run."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from dstrain.report.markdown import _epochs
from dstrain.report.runs import Run


def plot(runs: Sequence[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in runs))
    lengths = sorted({r.epochs for r in runs})
    styles = ["--", "-", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    panels = [("val_{metric}", "validation score", axes[0]), ("train_loss", "training loss", axes[1]),
              ("sparsity", "weight sparsity", axes[2])]
    for run in runs:
        epochs = [r["epoch"] for r in run.rows]
        color = colors[methods.index(run.method) % len(colors)]
        style = styles[lengths.index(run.epochs) % len(styles)] if len(lengths) > 1 else "-"
        for key, _, ax in panels:
            values = run.series(key.format(metric=run.metric))
            points = [(e, v) for e, v in zip(epochs, values) if v is not None]
            if points:
                ax.plot(*zip(*points), style, color=color, label=f"{run.label} ({_epochs(run.epochs)} ep)",
                        marker="." if len(points) < 15 else None)
    metric = runs[0].metric if len({r.metric for r in runs}) == 1 else "score"
    axes[0].set_ylabel(f"val {metric}")
    axes[1].set_ylabel("train loss")
    if all((r.get("train_loss") or 0) > 0 for run in runs for r in run.rows):
        axes[1].set_yscale("log")
    axes[2].set_ylabel("weight sparsity")
    for _, title, ax in panels:
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
