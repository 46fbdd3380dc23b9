"""The ``dstrain`` console command (entry point ``dstrain=dstrain.cli:main`` in setup.py).

    dstrain train  [options]    # train recipes (the options of launch/train.py; --list names the shipped recipes)
    dstrain report RUN_DIR [RUN_DIR ...] [--out OUT_DIR]   # default OUT_DIR: the first RUN_DIR
    dstrain selfcheck       # fused kernels vs the PyTorch reference on this GPU (exit 3: cannot run here)
    dstrain verify CHECKPOINT [CHECKPOINT ...]  # check a checkpoint (or a checkpoints/ folder) against its manifest
    dstrain export RUN_OR_CHECKPOINT --format {torchvision,hf,compressed,semi-structured} --out DIR
    dstrain speedcheck MODEL [--batch 1,8,64] [--dtype bf16] [--json OUT]  # will sparsity make MODEL faster here?

Each subcommand hands the rest of the command line to its own module's parser
(``dstrain.cli.<command>``), so ``dstrain train --help`` shows the full options.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

COMMANDS = ("train", "report", "selfcheck", "verify", "export", "speedcheck")


def _usage() -> str:
    return __doc__.split("\n\n")[1]


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage:\n{_usage()}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; use one of {', '.join(COMMANDS)}\nusage:\n{_usage()}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"dstrain.cli.{command}")
    entry = getattr(module, "console_main", module.main)  # train: leaves torch.distributed cleanly at the end
    return int(entry(rest) or 0)
