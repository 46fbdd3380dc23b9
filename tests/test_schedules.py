"""Sparsity and LR schedules are pure functions of the step: pin their values."""
import math

import pytest

from dstrain.schedules import ACDC, Constant, Dense, Gradual, LRSchedule, OneShot


def test_cubic_gmp_values_match_the_formula():
    s = Gradual(initial_sparsity=0.1, final_sparsity=0.9, start=10, end=50, frequency=10)
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 at t = t0 + k dt, n dt = 40
    expected = {10: 0.1, 20: 0.9 - 0.8 * 0.75**3, 30: 0.9 - 0.8 * 0.5**3, 40: 0.9 - 0.8 * 0.25**3, 50: 0.9}
    for t, value in expected.items():
        assert s.updates_mask(t)
        assert s.target(t) == pytest.approx(value, abs=1e-12)
    # between updates the target holds at the last update's value
    assert s.target(25) == pytest.approx(expected[20])
    assert s.target(9) == 0.0 and not s.is_compressed(9)
    assert s.target(1000) == 0.9
    assert s.update_steps(100) == [10, 20, 30, 40, 50]


def test_gmp_end_not_on_frequency_grid_still_reaches_final():
    s = Gradual(initial_sparsity=0.0, final_sparsity=0.8, start=0, end=25, frequency=10)
    assert s.update_steps(40) == [0, 10, 20, 25]
    assert s.target(25) == 0.8


def test_acdc_phase_boundaries():
    s = ACDC(sparsity=0.9, warmup=10, compressed=5, decompressed=5, final=10, total=50)
    phases = "".join("C" if s.is_compressed(t) else "D" for t in range(50))
    assert phases == "D" * 10 + "C" * 5 + "D" * 5 + "C" * 5 + "D" * 5 + "C" * 5 + "D" * 5 + "C" * 10
    assert s.phase_starts() == [10, 20, 30, 40]
    assert s.update_steps(50) == [10, 20, 30, 40]
    assert s.target(12) == 0.9 and s.target(17) == 0.0


def test_acdc_final_phase_cuts_a_compressed_phase_short():
    s = ACDC(sparsity=0.95, warmup=2, compressed=4, decompressed=4, final=3, total=15)
    phases = "".join("C" if s.is_compressed(t) else "D" for t in range(15))
    assert phases == "DD" + "CCCC" + "DDDD" + "CC" + "CCC"
    assert s.update_steps(15) == [2, 10, 12]


def test_constant_oneshot_dense():
    assert Constant(0.5).update_steps(10) == [0]
    assert all(Constant(0.5).is_compressed(t) for t in range(10))
    one = OneShot(0.7, at=4)
    assert one.update_steps(10) == [4] and one.target(3) == 0.0 and one.target(4) == 0.7
    assert Dense().update_steps(10) == [] and not Dense().is_compressed(3)


def test_lr_warmup_then_cosine():
    lr = LRSchedule(base_lr=1.0, total=110, shape="cosine", warmup=10, warmup_start_factor=0.1)
    assert lr(0) == pytest.approx(0.1)
    assert lr(5) == pytest.approx(0.55)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.5)
    assert lr(110) == pytest.approx(0.0, abs=1e-12)


def test_lr_linear_step_constant():
    assert LRSchedule(2.0, 100, "linear", min_lr=0.0)(25) == pytest.approx(1.5)
    step = LRSchedule(1.0, 100, "step", milestones=(30, 60), gamma=0.1)
    assert [step(t) for t in (29, 30, 59, 60)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert LRSchedule(0.3, 100, "constant")(99) == 0.3


def test_lr_rewind_restarts_the_decay_at_each_pruning_step():
    lr = LRSchedule(1.0, 100, "linear", restarts=(40, 70))
    assert lr(39) == pytest.approx(0.61)
    assert lr(40) == pytest.approx(1.0)
    assert lr(55) == pytest.approx(0.75)
    assert lr(70) == pytest.approx(1.0)
    assert lr(85) == pytest.approx(0.5)
    assert math.isclose(lr(100), 0.0, abs_tol=1e-12)


def test_cyclic_lr_runs_the_whole_shape_between_restarts():
    lr = LRSchedule(1.0, 100, "linear", min_lr=0.1, warmup=10, restarts=(40, 70), cyclic=True)
    assert lr(10) == pytest.approx(1.0)
    assert lr(25) == pytest.approx(0.55)  # halfway through the first segment, warm-up end -> 40
    assert lr(40) == pytest.approx(1.0)
    assert lr(55) == pytest.approx(0.55)  # halfway 40 -> 70, not 40 -> 100
    assert lr(70) == pytest.approx(1.0)
    assert lr(85) == pytest.approx(0.55)  # the last segment ends with training, as without cyclic
    assert lr(100) == pytest.approx(0.1)
    plain = LRSchedule(1.0, 100, "linear", min_lr=0.1, warmup=10, restarts=(40, 70))
    assert [plain(t) for t in range(70, 101)] == [lr(t) for t in range(70, 101)]
    assert plain(55) > lr(55)


def test_acdc_last_decompressed_phase_before_the_final_one():
    s = ACDC(sparsity=0.9, warmup=4, compressed=2, decompressed=2, final=3, total=18, last_decompressed=5)
    phases = "".join("C" if s.is_compressed(t) else "D" for t in range(18))
    assert phases == "DDDD" + "CCDD" + "CC" + "DDDDD" + "CCC"
    assert s.update_steps(18) == [4, 8, 15]


def _brute_force(schedule, total):
    return [t for t in range(total) if schedule.updates_mask(t)]


def _random_schedules(rng, n):
    """Small schedules of every kind, edges included: positions at, before and after the end of the run."""
    for _ in range(n):
        total = rng.randint(0, 60)
        kind = rng.choice(["dense", "constant", "oneshot", "gmp", "acdc"])
        if kind == "dense":
            yield Dense(), total
        elif kind == "constant":
            yield Constant(rng.random()), total
        elif kind == "oneshot":
            yield OneShot(rng.random(), rng.randint(0, 70)), total
        elif kind == "gmp":
            start = rng.randint(0, 50)
            yield Gradual(0.0, 0.9, start, start + rng.randint(0, 40), rng.randint(1, 12)), total
        else:
            yield ACDC(0.9, rng.randint(0, 30), rng.randint(1, 8), rng.randint(1, 8), rng.randint(1, 20),
                       total + rng.randint(-10, 10), rng.randint(0, 10)), total


def test_closed_form_update_steps_equal_the_step_by_step_walk():
    import random

    rng = random.Random(20240601)
    for schedule, total in _random_schedules(rng, 5000):
        expected = _brute_force(schedule, total)
        assert schedule.update_steps(total) == expected, (schedule, total)
        assert schedule.count_updates(total) == len(expected), (schedule, total)
        if isinstance(schedule, ACDC):
            starts, t = [], schedule.warmup  # the phase loop the closed form replaces
            while t < schedule.alternation_end:
                starts.append(t)
                t += schedule.compressed + schedule.decompressed
            assert schedule.phase_starts() == starts + [schedule.final_start]


def test_update_counts_of_huge_runs_take_no_time():
    import time

    start = time.perf_counter()
    total = 10**15
    assert Gradual(0.0, 0.9, 0, total // 2, 1).count_updates(total) == total // 2 + 1
    assert ACDC(0.9, 10, 1, 1, 10, total).count_updates(total) == (total - 20) // 2 + 1
    assert OneShot(0.5, total - 1).update_steps(total) == [total - 1]
    assert Constant(0.5).update_steps(total) == [0] and Dense().count_updates(total) == 0
    assert Gradual(0.0, 0.9, 5, 10**12, 10**11).update_steps(total)[:3] == [5, 10**11 + 5, 2 * 10**11 + 5]
    assert time.perf_counter() - start < 1
