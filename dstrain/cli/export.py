"""``dstrain export RUN_OR_CHECKPOINT --format FORMAT --out DIR``: write a trained run for the people who use it."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from dstrain.errors import ConfigError
from dstrain.export import FORMATS
from dstrain.run.export import ARG, export_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dstrain export", description=__doc__.split("\n\n")[0])
    p.add_argument("path", metavar=ARG, help="run folder (OUTPUT_DIR/<recipe name>) or a checkpoints/step* folder")
    p.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="folder to write")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        export_checkpoint(args.path, args.format, args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
