"""Wall time of the training loop alone, for the throughput a run reports.

Why a separate clock: evaluation and checkpoint writes are not training and must not
count, and on a GPU the first steps pay one-off costs (Triton autotuning, cuDNN
algorithm search, allocator growth).  Over a few-hundred-step benchmark those costs
are a few percent, the size of the sparse-vs-dense overhead being measured, so the
clock also reports the rate after the first ``warmup_steps`` optimizer steps.
Device work is asynchronous, so every reading synchronises the device first.
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, Optional, Tuple

import torch

WARMUP_STEPS = 20


class TrainingClock:
    def __init__(self, device: torch.device, warmup_steps: int = WARMUP_STEPS) -> None:
        self.device = device
        self.warmup_steps = warmup_steps
        self.seconds = 0.0
        self.steps = 0
        self._started: Optional[float] = None
        self._after_warmup: Optional[Tuple[float, int]] = None  # (seconds, steps) when warm-up ended

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def running(self) -> bool:
        return self._started is not None

    def start(self) -> None:
        if not self.running:
            self._sync()
            self._started = time.perf_counter()

    def stop(self) -> None:
        if self.running:
            self._sync()
            self.seconds += time.perf_counter() - self._started
            self._started = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Keep a block (a checkpoint write inside the loop) out of the training time."""
        was_running = self.running
        self.stop()
        try:
            yield
        finally:
            if was_running:
                self.start()

    def step_done(self) -> None:
        """Count one optimizer step; the warm-up boundary takes a synchronised reading."""
        self.steps += 1
        if self.steps == self.warmup_steps and self.running:
            self._sync()
            self._after_warmup = (self.seconds + time.perf_counter() - self._started, self.steps)

    def rates(self, samples_per_step: int) -> Dict[str, Optional[float]]:
        """Samples/s over all counted steps, and over those after warm-up (None if there were none)."""
        overall = self.steps * samples_per_step / max(self.seconds, 1e-9)
        steady = None
        if self._after_warmup is not None and self.steps > self._after_warmup[1]:
            seconds, steps = self._after_warmup
            steady = (self.steps - steps) * samples_per_step / max(self.seconds - seconds, 1e-9)
        return {"train_samples_per_s": overall, "train_samples_per_s_after_warmup": steady}
