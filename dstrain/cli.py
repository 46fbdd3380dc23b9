"""The ``dstrain`` console command (entry point ``dstrain=dstrain.cli:main`` in setup.py).

    dstrain train  [launch/train.py options]   # train recipes (same options as launch/train.py)
    dstrain report RUN_DIR [RUN_DIR ...] [--out OUT_DIR]   # default OUT_DIR: the first RUN_DIR
    dstrain selfcheck       # fused kernels vs the PyTorch reference on this GPU (exit 3: cannot run here)
    dstrain verify CHECKPOINT [CHECKPOINT ...]  # check a checkpoint (or a checkpoints/ folder) against its manifest
    dstrain export RUN_OR_CHECKPOINT --format {torchvision,hf,compressed,semi-structured} --out DIR
    dstrain speedcheck MODEL [--batch 1,8,64,256] [--dtype bf16] [--json PATH]  # will sparsity make MODEL faster here?

Each subcommand hands the rest of the command line to its own parser, so
``dstrain train --help`` and ``dstrain report --help`` show the full options.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "launch" / "train.py"


def _report(argv: List[str]) -> int:
    from .report import main

    return main(argv)


def _selfcheck(argv: List[str]) -> int:
    from .optim.selfcheck import main

    return main(argv)


def _verify(argv: List[str]) -> int:
    from .manifest import main

    return main(argv)


def _export(argv: List[str]) -> int:
    from .export_cli import main

    return main(argv)


def _speedcheck(argv: List[str]) -> int:
    from .speedcheck.cli import main

    return main(argv)


def _train(argv: List[str]) -> int:
    """Runs launch/train.py's main; it lives in the source checkout, not in the installed package."""
    if not TRAIN_SCRIPT.is_file():
        print(f"error: dstrain train needs the source checkout ({TRAIN_SCRIPT} not found) — "
              "install with `pip install -e .` from the repository, or run launch/train.py directly",
              file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("dstrain_launch_train", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prog, sys.argv[0] = sys.argv[0], "dstrain train"  # argparse names the program after argv[0]
    try:
        return int(module.main(argv) or 0)
    finally:
        sys.argv[0] = prog


COMMANDS: Dict[str, Callable[[List[str]], int]] = {"train": _train, "report": _report, "selfcheck": _selfcheck,
                                                   "verify": _verify, "export": _export, "speedcheck": _speedcheck}


def _usage() -> str:
    return __doc__.split("\n\n")[1] if __doc__ else "dstrain {train,report,selfcheck} ..."


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
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
