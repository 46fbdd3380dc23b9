"""The compiled (GPU) path of the kernels, checked on a machine without a GPU.

The interpreter tests pin the numerics; these pin what the interpreter cannot
see: every kernel variant lowers all the way to an sm_80/sm_90 cubin with the
Triton this project installs, and the full blocks of 16-byte-aligned tensors
compile to 128-bit loads and stores (the unaligned variant, which must stay
correct for views into DeepSpeed's flat buffers, to none).  Runs
``python -m dstrain.kernels.aot --json`` in a subprocess, since conftest turns the
interpreter on for this process.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from helpers import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
FP32_STREAMS = {"sgd": (3, 2), "adamw": (4, 3), "hist": (1, 0)}
"""Per kernel: fp32 tensors read and written per element when grads are fp32."""


def _compile(*args: str) -> List[Dict]:
    env = subprocess_env()
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-m", "dstrain.kernels.aot", "--json", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _wide(counts: Dict[str, int]) -> int:
    return counts.get("128", 0)


def _check(variants: List[Dict]) -> None:
    assert variants, "no variant compiled"
    for v in variants:
        assert v["spill_bytes"] in (None, 0), f"{v['label']} spills {v['spill_bytes']} bytes"
        if not v["ALIGNED"]:
            assert _wide(v["loads"]) == 0 and _wide(v["stores"]) == 0, v
            continue
        reads, writes = FP32_STREAMS[v["kernel"]]
        if v.get("GRAD_KIND", v.get("X_KIND")) != 0:
            reads -= 1  # a bf16/fp16 gradient is narrower; still vectorised, counted below
        assert _wide(v["loads"]) >= max(reads, 1), f"{v['label']}: {v['loads']}"
        assert _wide(v["stores"]) >= writes, f"{v['label']}: {v['stores']}"


def test_kernels_compile_for_hopper_with_128_bit_accesses():
    variants = _compile("--arch", "90")
    labels = {v["label"] for v in variants}
    assert {"sgd fp32 grad, bytemask, unaligned", "adamw bf16 grad, bitmask, aligned", "hist bf16, pass 2, aligned"} <= labels
    _check(variants)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["80", "90"])
def test_every_kernel_variant_compiles(arch):
    _check(_compile("--arch", arch, "--full"))
