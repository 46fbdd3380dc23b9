"""``dstrain report RUN_DIR... [--out OUT_DIR]``: under-training diagnostics of finished runs, as Markdown and a plot."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from dstrain.errors import ConfigError
from dstrain.report import write_report


def build_parser() -> argparse.ArgumentParser:
    from dstrain import report

    p = argparse.ArgumentParser(prog="dstrain report", description=report.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folder (with metrics.jsonl), or a folder of run folders")
    p.add_argument("--out", default=None, metavar="OUT_DIR",
                   help="where report.md and report.png go (default: the first RUN_DIR)")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = args.run_dirs[0]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        paths = write_report(args.run_dirs, args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print(f"wrote {paths['md']} and {paths['png']}")
    return 0
