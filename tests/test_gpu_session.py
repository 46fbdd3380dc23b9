"""benchmarks/gpu_session.py: the GPU session's driver keeps going, records everything, packs each part.

The session itself is rehearsed on the CPU with ``--dry-run`` (benchmarks/README.md); these
tests pin the driver's own behaviour in a second: a failed or timed-out step is recorded and
the next one still runs, a timed-out step's children die with it, the result files land flat
in the output folder, the throughput summary reads ``<runs>/<run>/<recipe name>/result.json``,
the speedchecks run where and as the README says, and each part ends with its files in one
archive, because the device tool brings back at most 8 files.
"""
from __future__ import annotations

import json
import sys
import tarfile
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


@pytest.mark.parametrize("part, timeout", [("1", 330), ("2", 330), ("3", 210)])
def test_header_and_readme_give_the_device_call_for_each_part(part, timeout):
    repo = Path(__file__).resolve().parent.parent
    call = f'bash benchmarks/gpu_session.sh "$OUT" {part}'
    assert call in (repo / "benchmarks" / "gpu_session.sh").read_text()
    readme = (repo / "benchmarks" / "README.md").read_text()
    assert "run(command='" + call + f"', carry=[\".whl\"], timeout_s={timeout})" in readme
    assert gpu_session.PART_BUDGET_S[part] + 30 <= timeout  # wheel install and Python start fit the rest
    assert len(call) <= 2000


def _fake_steps(monkeypatch, s):
    """Steps recorded as ok without running anything; returns the list of their names."""
    names = []

    def run(name, cmd, timeout_s, env=None, output=None):
        names.append(name)
        (s.out / (output or f"{name}.txt")).write_text(" ".join(cmd))
        s.record(name, "ok", 0.0, output or f"{name}.txt", " ".join(cmd))
        return True

    monkeypatch.setattr(s, "run", run)
    return names


def test_part2_runs_the_speedchecks_after_the_throughput_runs_and_before_aot(tmp_path, monkeypatch):
    s = gpu_session.Session(tmp_path, budget_s=60, dry_run=False)
    names = _fake_steps(monkeypatch, s)
    gpu_session.part2(s, tmp_path / "runs")
    assert [n for n in names if n != "nvidia-smi"] == ["environment", "throughput_dense", "throughput_sparse90",
                                                       "speedcheck_resnet50", "speedcheck_bert-base", "aot"]
    s3 = gpu_session.Session(tmp_path / "p3", budget_s=60, dry_run=True)
    s3.out.mkdir()
    assert _fake_steps(monkeypatch, s3) is not None
    gpu_session.part3(s3)
    assert [st["name"] for st in s3.steps] == ["environment", "speedcheck_resnet50", "speedcheck_bert-base", "profile"]


def test_speedcheck_commands_on_the_gpu_and_in_the_dry_run(tmp_path):
    gpu = " ".join(gpu_session.speedcheck_command(tmp_path, "resnet50", dry_run=False))
    assert gpu.endswith(f"-m dstrain.cli speedcheck resnet50 --dtype bf16 --batch 1,8,64,256 --budget-s 30 "
                        f"--json {tmp_path / 'speedcheck_resnet50.json'}")
    assert "--seq-len 128 --json" in " ".join(gpu_session.speedcheck_command(tmp_path, "bert-base", dry_run=False))
    dry = gpu_session.speedcheck_command(tmp_path, "bert-base", dry_run=True)
    assert dry[dry.index("--dtype") + 1] == "bf16" and dry[dry.index("--batch") + 1] == "1,2"


def test_each_part_packs_every_file_it_wrote_and_leaves_three_loose(tmp_path, monkeypatch):
    (tmp_path / "install.txt").write_text("written by gpu_session.sh before Python starts")

    def fake_part(part):
        def run(s, runs_dir):
            _fake_steps(monkeypatch, s)
            for i in range(6):  # more than the 8 files the device tool would bring back, over two parts
                s.run(f"p{part}_step{i}", ["echo", str(i)], 10)
        return run

    monkeypatch.setattr(gpu_session, "PARTS", {p: fake_part(p) for p in ("1", "2", "3")})
    assert gpu_session.main(["--out", str(tmp_path), "--part", "all", "--budget", "60"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part1.tar.gz", "part2.tar.gz", "steps.json", "summary.md"]
    with tarfile.open(tmp_path / "part1.tar.gz") as tar:
        assert sorted(tar.getnames()) == sorted(["install.txt"] + [f"p1_step{i}.txt" for i in range(6)])
        assert tar.extractfile("p1_step3.txt").read() == b"echo 3"
    with tarfile.open(tmp_path / "part2.tar.gz") as tar:
        assert sorted(tar.getnames()) == [f"p2_step{i}.txt" for i in range(6)]
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert [st["name"] for st in steps if st["name"].startswith("pack")] == ["pack_part1", "pack_part2"]
    assert all(st["status"] == "ok" for st in steps)
    summary = (tmp_path / "summary.md").read_text()
    assert "| pack_part2 | ok |" in summary and "inside part1.tar.gz, part2.tar.gz" in summary
    assert gpu_session.main(["--out", str(tmp_path / "three"), "--part", "3", "--budget", "60"]) == 0
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == ["part3.tar.gz", "steps.json", "summary.md"]
