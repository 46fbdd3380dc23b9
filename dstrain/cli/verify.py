"""``dstrain verify CHECKPOINT...``: check checkpoints against their manifests (size and SHA-256 of every file).

Exit status: 0 every checkpoint verifies, 1 one is damaged, 2 a usage error.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional

from dstrain.run.manifest import MANIFEST, CheckpointDamaged, verify_checkpoint
from dstrain.run.rundir import RunDir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dstrain verify", description="Check checkpoints against their manifests "
                                "(size and SHA-256 of every file). A run folder, or a folder of step folders "
                                "(a run's checkpoints/), checks each of them.")
    p.add_argument("paths", nargs="+", metavar="CHECKPOINT")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    status = 0
    for arg in args.paths:
        path = Path(arg)
        if not path.is_dir():
            print(f"error: {path} is not a folder — pass a checkpoint (runs/<name>/checkpoints/step...) "
                  "or a checkpoints/ folder", file=sys.stderr)
            return 2
        if not (path / MANIFEST).exists() and RunDir(path).checkpoints.is_dir():
            path = RunDir(path).checkpoints  # a run folder: its checkpoints
        steps = sorted(c for c in path.iterdir() if c.is_dir() and re.match(r"^step\d+$", c.name))
        for folder in ([path] if (path / MANIFEST).exists() or not steps else steps):
            try:
                data = verify_checkpoint(folder)
            except CheckpointDamaged as err:
                print(f"DAMAGED {folder}: {err.file}: {err.reason}")
                status = 1
                continue
            size = sum(f["size"] for f in data["files"].values())
            print(f"OK {folder}: step {data.get('step')}, {len(data['files'])} files, {size / 2**20:.1f} MiB verified")
    return status
