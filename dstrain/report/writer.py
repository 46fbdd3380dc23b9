"""Writes a report: the Markdown tables and the figure, side by side in one folder."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

from dstrain.report.markdown import markdown
from dstrain.report.plot import plot
from dstrain.report.runs import load_runs
from dstrain.report.seeds import mean_curves, seed_groups


def write_report(run_dirs: Sequence[Path | str], out: Path | str) -> Dict[str, Path]:
    """Writes OUT/report.md and OUT/report.png; returns their paths."""
    runs = load_runs(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / "report.md", out / "report.png"
    md.write_text(markdown(runs))
    seeded = any(len(g) > 1 for g in seed_groups(runs).values())
    plot(mean_curves(runs) if seeded else runs, png)  # several seeds: one mean curve per recipe
    return {"md": md, "png": png}
