"""dstrain.run.lock: one run per output folder, across processes; released on exit and on a crash."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import TINY, subprocess_env

from dstrain import ConfigError
from dstrain.run.lock import STALE_AFTER_S, RunLock

REPO = Path(__file__).resolve().parent.parent


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    first, second = RunLock(tmp_path / ".lock"), RunLock(tmp_path / ".lock")
    first.acquire()
    with pytest.raises(ConfigError, match=rf"in use by another run \(pid {os.getpid()} on"):
        second.acquire()
    first.release()
    second.acquire()  # free again
    second.release()
    assert not (tmp_path / ".lock").exists()


def test_a_crashed_holder_on_this_host_does_not_block(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 999999, "started": 0}))
    lock = RunLock(tmp_path / ".lock")
    lock.acquire()  # no flock is held: the process that wrote it is gone
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_another_hosts_recent_lock_is_respected_and_a_stale_one_taken_over(tmp_path):
    path = tmp_path / ".lock"
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "started": time.time()}))
    with pytest.raises(ConfigError, match="in use by a run on another host"):
        RunLock(path).acquire()
    old = time.time() - STALE_AFTER_S - 10
    os.utime(path, (old, old))
    lock = RunLock(path)
    lock.acquire()
    lock.release()


def test_two_runs_started_at_once_into_one_folder(tmp_path):
    """The second is refused in one line; the first completes with its own files intact."""
    recipe = dict(TINY, name="shared", training={"epochs": 3, "batch_size": 128, "seed": 7})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--recipe", str(path), "--output_dir",
           str(tmp_path / "runs"), "--no_progress"]
    env = subprocess_env()
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "runs" / "shared" / ".dstrain-run.lock"
    deadline = time.time() + 120
    while not lock.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert lock.exists(), "the first run never took its lock"
    second = subprocess.run(cmd + ["--set", "training.seed=8"], env=env, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=600)
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1 and "in use by another run" in errors[0], second.stderr[-2000:]
    assert first.returncode == 0, err[-2000:]
    run_dir = tmp_path / "runs" / "shared"
    assert json.loads((run_dir / "recipe.json").read_text())["training"]["seed"] == 7
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 3 * (1437 // 128)
    assert not lock.exists()  # released at the end
