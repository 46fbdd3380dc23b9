"""What a newcomer meets around a run: threads per rank, the compile notice, TensorBoard files, flags."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from helpers import tiny_recipe

from dstrain import SparseTrainer, TrainerOptions, distributed

REPO = Path(__file__).resolve().parent.parent


def test_threads_per_rank_split_the_cores_unless_given(monkeypatch):
    before = torch.get_num_threads()
    try:
        for var in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr("os.cpu_count", lambda: 8)
        monkeypatch.setenv("LOCAL_SIZE", "2")  # what the deepspeed launcher sets
        distributed.set_rank_threads()
        assert torch.get_num_threads() == 4 and distributed.os.environ["OMP_NUM_THREADS"] == "4"
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # given: left alone
        torch.set_num_threads(1)
        distributed.set_rank_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_compile_notice_and_per_venv_cache(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    distributed.announce_cpu_comm_build()
    assert distributed.os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "venv" / "torch_extensions")
    assert "compiling DeepSpeed's CPU communication op once" in capsys.readouterr().out  # nothing built there yet


def _train(out: Path, **options):
    trainer = SparseTrainer(tiny_recipe(), TrainerOptions(output_dir=out, progress=False, **options))
    return trainer.train()


def test_one_tensorboard_event_set_per_run(tmp_path):
    events = lambda: sorted((tmp_path / "tb").glob("events.out.tfevents.*"))  # noqa: E731
    _train(tmp_path, max_steps=12)
    first = events()
    assert len(first) == 1
    _train(tmp_path, max_steps=12, overwrite=True)  # a fresh rerun replaces the old curves
    assert len(events()) == 1 and events() != first
    _train(tmp_path, resume="auto", max_steps=23)  # a resumed run continues the same set
    assert len(events()) == 2


def test_keep_last_is_a_flag(tmp_path):
    from dstrain.cli.train import main, parse_args

    assert parse_args([]).keep_last == 2 and parse_args(["--keep_last", "1"]).keep_last == 1
    assert main(["--recipe", str(REPO / "recipes" / "digits_dense.yaml"), "--output_dir", str(tmp_path),
                 "--save_every", "2", "--keep_last", "1", "--max_steps", "6", "--no_progress",
                 "--set", "task.arch_options={depth: 8, width: 8}"]) == 0
    kept = [p.name for p in (tmp_path / "digits_dense" / "checkpoints").iterdir() if p.name.startswith("step")]
    assert kept == ["step000000006"]
