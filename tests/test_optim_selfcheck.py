"""``dstrain selfcheck``: the on-device check of the fused kernels.

In CI it runs interpreted on the CPU (conftest sets TRITON_INTERPRET=1); the test
that runs it compiled on CUDA is skipped without a GPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import subprocess_env

from dstrain import cli, kernels
from dstrain.optim import selfcheck
from dstrain.optim.functional import masked_sgd

CPU = torch.device("cpu")


def test_selfcheck_passes_and_reports_every_case(capsys):
    assert cli.main(["selfcheck"]) == 0
    out = capsys.readouterr().out
    n_cases = len(selfcheck.OPTIMIZERS) * 2 * 5 * 2 + 1  # grad dtypes x mask formats x layouts, + select
    assert f"{n_cases}/{n_cases} cases agree" in out
    assert "FAIL" not in out


def test_selfcheck_quick_launches_every_kernel_variant(monkeypatch):
    """The quick set must reach every compiled variant; a set that misses one fails the run.

    Launches are only recorded here (the numbers of the quick cases are a subset of the
    full run's, checked above), so this costs a fraction of a second.
    """
    from dstrain.kernels import _runtime

    monkeypatch.setattr(selfcheck, "run_select_case", lambda device: selfcheck.CaseResult("select", 0.0, True, 0, True))
    with _runtime.stubbed_launches():
        results = selfcheck.run_all(CPU, quick=True)
    assert len(results) == len(selfcheck.quick_cases()) + 2
    assert results[-1].ok and results[-1].note.startswith("24/24")
    monkeypatch.setattr(selfcheck, "quick_cases", lambda: [c for c in selfcheck.full_cases()[:1]])
    with _runtime.stubbed_launches():
        results = selfcheck.run_all(CPU, quick=True)
    assert not results[-1].ok and "never launched" in results[-1].note


def test_selfcheck_catches_a_kernel_that_revives_pruned_weights(monkeypatch):
    def leaky(params, grads, bufs, masks, **hyper):
        masked_sgd(params, grads, bufs, [None] * len(params), **hyper)  # forgets the masks

    monkeypatch.setattr(kernels, "fused_masked_sgd", leaky)
    result = selfcheck.run_optimizer_case("sgd", torch.float32, "bool", "fresh", CPU)
    assert not result.ok and result.pruned_nonzero > 0


def test_selfcheck_catches_a_step_applied_twice(monkeypatch):
    """What an autotuner benchmarking an in-place kernel on the real tensors would do."""
    real = kernels.fused_masked_adamw

    def twice(*args, **kwargs):
        real(*args, **kwargs)
        real(*args, **kwargs)

    monkeypatch.setattr(kernels, "fused_masked_adamw", twice)
    result = selfcheck.run_optimizer_case("adamw", torch.float32, "bit", "flat", CPU)
    assert not result.ok and result.pruned_nonzero == 0 and result.max_abs_diff > 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels need a CUDA GPU")
def test_selfcheck_compiled_on_cuda():
    env = subprocess_env()
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-m", "dstrain.cli.selfcheck"], cwd=Path(__file__).resolve().parent.parent,
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


def test_selfcheck_says_when_it_cannot_run_here(monkeypatch, capsys):
    """No GPU and no interpreter: exit 3 (not 1, which means the kernels disagree)."""
    import dstrain.kernels._runtime as runtime

    monkeypatch.setattr(runtime, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["selfcheck"]) == selfcheck.EXIT_CANNOT_RUN == 3
    assert "cannot run here" in capsys.readouterr().err


def test_selfcheck_help_names_the_subcommand_and_exit_statuses(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["selfcheck", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dstrain selfcheck") and "3 the check cannot run here" in out


def test_importing_dstrain_leaves_the_kernel_settings_unread():
    """``--quick`` sets DSTRAIN_AUTOTUNE after ``import dstrain``: nothing before may define the kernels."""
    code = ("import sys, dstrain, dstrain.cli.selfcheck, dstrain.optim\n"
            "assert 'dstrain.kernels._runtime' not in sys.modules and 'triton' not in sys.modules, "
            "sorted(m for m in sys.modules if 'kernels' in m or m.startswith('triton'))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
