"""TrainingClock: training time without saves, and the rate after the warm-up steps."""
from __future__ import annotations

import time

import torch

from dstrain.run.clock import TrainingClock

CPU = torch.device("cpu")


def test_paused_blocks_and_stopped_time_do_not_count():
    clock = TrainingClock(CPU)
    clock.start()
    time.sleep(0.05)
    with clock.paused():
        time.sleep(0.3)
    time.sleep(0.05)
    clock.stop()
    time.sleep(0.2)
    with clock.paused():  # not running: stays stopped
        pass
    assert not clock.running
    assert 0.09 < clock.seconds < 0.3


def test_rate_after_warmup_leaves_out_slow_first_steps():
    clock = TrainingClock(CPU, warmup_steps=2)
    clock.start()
    for pause in (0.2, 0.2, 0.01, 0.01, 0.01, 0.01):
        time.sleep(pause)
        clock.step_done()
        if clock.steps == 1:
            assert clock.rates(10)["train_samples_per_s_after_warmup"] is None
    clock.stop()
    rates = clock.rates(10)
    assert rates["train_samples_per_s"] < 200 < 500 < rates["train_samples_per_s_after_warmup"]  # ~136 vs ~1000
