"""Test-wide settings.

TRITON_INTERPRET must be set before Triton compiles any @triton.jit function, so it is
set here, ahead of every import of :mod:`kernels`; CI has no GPU.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
