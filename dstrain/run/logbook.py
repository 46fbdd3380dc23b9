"""What a run tells its user and writes down: log lines, metrics.jsonl and TensorBoard.

Why one object: only rank 0 speaks and writes, log lines must not tear the progress
bar, and the metrics rows go to two places that must agree (a resumed run rewrites
metrics.jsonl from its checkpointed rows and purges TensorBoard events after the
resumed step).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from dstrain import distributed as dstdist
from dstrain.run.rundir import RunDir


class Logbook:
    def __init__(self, run_dir: RunDir, is_main: bool) -> None:
        self.run_dir = run_dir
        self.is_main = is_main
        self.rows: List[Dict[str, Any]] = []
        self.progress = None  # a tqdm bar while the loop runs
        self.writer = None  # a TensorBoard SummaryWriter, if enabled

    def log(self, text: str) -> None:
        if not self.is_main:
            return
        if self.progress is not None:
            self.progress.write(f"[dstrain] {text}")  # above the bar, not onto its line
        else:
            print(f"[dstrain] {text}", flush=True)

    def open(self, step: int, total: int, name: str, progress: bool, tensorboard: bool) -> None:
        """Start the bar and the TensorBoard writer at ``step`` (0 for a fresh run)."""
        if not self.is_main:
            return
        if tensorboard:
            self.writer = self._tensorboard_writer(step)
        if progress:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=total, initial=step, desc=name, dynamic_ncols=True, leave=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _tensorboard_writer(self, step: int):
        """One event-file set per run, like metrics.jsonl.

        A fresh run deletes the event files an earlier run left in the folder (five reruns
        showed five overlapping curves); a resumed run keeps them and tells TensorBoard to
        drop their events from the resumed step on (``purge_step``), so a crash after the
        last checkpoint leaves no doubled stretch.
        """
        from torch.utils.tensorboard import SummaryWriter

        tb_dir = self.run_dir.tensorboard
        if step == 0:
            for old in tb_dir.glob("events.out.tfevents.*"):
                old.unlink()
        return SummaryWriter(str(tb_dir), purge_step=step or None)

    def record(self, row: Dict[str, Any]) -> None:
        """Append an evaluation row (every rank keeps the rows: they are checkpointed); rank 0 writes them.

        Every rank calls this, so a write that fails on rank 0 stops every rank with its one line.
        """
        self.rows.append(row)
        dstdist.on_main_or_raise(lambda: self._write(row))

    def _write(self, row: Dict[str, Any]) -> None:
        self.run_dir.write(self.run_dir.metrics, "".join(json.dumps(r) + "\n" for r in self.rows))
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def step_postfix(self, loss: Optional[float], lr: float) -> None:
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}")

    def step_done(self) -> None:
        if self.progress is not None:
            self.progress.update(1)
