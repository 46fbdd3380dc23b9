#!/usr/bin/env python
"""Train a sparse network from a recipe with DeepSpeed: the script that launchers start.

    python launch/train.py                                   # embedded default: digits, dense vs GMP 90%
    deepspeed launch/train.py --deepspeed_config launch/ds_config.json --recipe recipes/digits_gmp90.yaml
    torchrun --nproc_per_node 2 launch/train.py --recipe recipes/digits_acdc90.yaml

The options are those of ``dstrain train`` (``python launch/train.py --help``); the code
is :mod:`dstrain.cli.train`.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from dstrain.cli.train import console_main, main  # noqa: E402,F401  (tests call main)

if __name__ == "__main__":
    sys.exit(console_main())
