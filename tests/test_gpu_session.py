"""benchmarks/gpu_session.py: the GPU session's driver keeps going, records everything, writes flat.

The session itself is rehearsed on the CPU with ``--dry-run`` (benchmarks/README.md); these
tests pin the driver's own behaviour in a second: a failed or timed-out step is recorded and
the next one still runs, a timed-out step's children die with it, the result files land flat
in the output folder, and the throughput summary reads ``<runs>/<run>/<recipe name>/result.json``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gpu_session  # noqa: E402


def test_failed_and_timed_out_steps_are_recorded_and_the_session_goes_on(tmp_path):
    s = gpu_session.Session(tmp_path, budget_s=60, dry_run=False)
    s.min_step_s = 0.5
    assert not s.run("fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 30)
    marker = tmp_path / "child_alive"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w').write('x')"
    parent = ("import subprocess, sys, time; "
              f"subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True); time.sleep(30)")
    start = time.monotonic()
    assert not s.run("hangs", [sys.executable, "-c", parent], 1.5)
    assert time.monotonic() - start < 10
    assert s.run("works", [sys.executable, "-c", "print('fine')"], 30)
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert [(st["name"], st["status"]) for st in steps] == [("fails", "failed"), ("hangs", "timeout"), ("works", "ok")]
    assert "boom" in (tmp_path / "fails.txt").read_text() and "fine" in (tmp_path / "works.txt").read_text()
    time.sleep(3.5)
    assert not marker.exists(), "a timed-out step's own children (own session) must be killed too"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []  # flat


def test_steps_beyond_the_budget_are_skipped_not_started(tmp_path):
    s = gpu_session.Session(tmp_path, budget_s=3, dry_run=False)
    assert not s.run("late", [sys.executable, "-c", "print('never')"], 60)
    assert s.steps[-1]["status"] == "skipped" and not (tmp_path / "late.txt").exists()


def test_throughput_results_are_read_from_the_recipe_named_folder_and_copied_flat(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    rates = {"dense": 2000.0, "sparse90": 1950.0}
    for run, rate in rates.items():
        folder = runs / run / gpu_session._recipe_name(gpu_session.RECIPES[run])
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(
            {"train_samples_per_s": rate * 0.9, "train_samples_per_s_after_warmup": rate, "steps": 300}))
        (folder / "metrics.jsonl").write_text("{}\n")
    results = {run: gpu_session.collect_run(out, runs, run) for run in rates}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"throughput_{r}_{f}" for r in rates for f in ("result.json", "metrics.jsonl"))
    table = gpu_session.throughput_table(results)
    assert "| dense | 2000.0 | 1800.0 | 300 |" in table
    assert f"sparse overhead: {100 * (2000 / 1950 - 1):+.2f}%" in table
    assert gpu_session.collect_run(out, tmp_path / "elsewhere", "dense") is None


@pytest.mark.parametrize("part", ["1", "2"])
def test_header_and_readme_give_the_device_call_for_each_part(part):
    repo = Path(__file__).resolve().parent.parent
    call = f'bash benchmarks/gpu_session.sh "$OUT" {part}'
    assert call in (repo / "benchmarks" / "gpu_session.sh").read_text()
    readme = (repo / "benchmarks" / "README.md").read_text()
    assert "run(command='" + call + "', carry=[\".whl\"], timeout_s=330)" in readme
    assert len(call) <= 2000
