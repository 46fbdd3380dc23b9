"""Test-wide settings.

TRITON_INTERPRET must be set before Triton compiles any @triton.jit function, so it is
set here, ahead of every import of :mod:`dstrain.kernels`; CI has no GPU.  One torch thread:
the tests' models are tiny, and on a 2-core machine shared with subprocess workers
extra threads only contend.  A per-checkout extensions folder keeps DeepSpeed's CPU
communication op from being rebuilt by every other checkout's venv.
"""
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parent.parent / ".torch_extensions"))

import torch  # noqa: E402

torch.set_num_threads(1)
